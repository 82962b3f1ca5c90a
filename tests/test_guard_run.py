"""A run's own folder: it writes only into a folder of its own, never through a symbolic link, uses a
checkpoint only when its name and its meta.json agree, and names a checkpoint of a newer nano360 in
one line. Each case: refused or handled, the user's files byte-identical, the message naming the file."""
import hashlib, json, os, shutil

import pytest

import train
from checkpoint import CheckpointError
from config import ConfigError
from helpers import reseal, small_args


def tree(root):
    """sha256 of every file under root (links not followed), so "untouched" means byte for byte."""
    out = {}
    for d, dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = ("link", os.readlink(p)) if os.path.islink(p) else \
                hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def test_an_out_dir_that_is_not_a_run_is_refused(tiny_data, tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("three years of work")
    (mine / "data").mkdir()
    before = tree(tmp_path)
    with pytest.raises(ConfigError, match=rf"^out_dir={mine} holds 2 entries that no nano360 run wrote "
                                          r"\(data/, thesis.txt\): choose a new or empty out_dir$"):
        train.main(small_args(tiny_data, mine, "--max_steps=1"))
    assert tree(tmp_path) == before
    # a run's folder is one: a second run there resumes it, and an empty folder is fine
    (tmp_path / "empty").mkdir()
    train.main(small_args(tiny_data, tmp_path / "empty", "--max_steps=1"))
    assert os.path.exists(tmp_path / "empty" / "ckpt_0000001" / "DONE")


@pytest.mark.parametrize("name", ["LOCK", "metrics.jsonl", "metrics.jsonl.tmp"])
def test_a_run_never_writes_through_a_symbolic_link(tiny_data, tmp_path, name):
    out, victim = tmp_path / "run", tmp_path / "precious.txt"
    train.main(small_args(tiny_data, out, "--max_steps=1"))
    victim.write_text("not yours\n")
    target = out / name
    if target.exists():
        os.remove(target)
    os.symlink(victim, target)
    before = tree(tmp_path)
    with pytest.raises(CheckpointError, match=rf"^{target} is a symbolic link \(to {victim}\): a run writes only its own"):
        train.main(small_args(tiny_data, out, "--max_steps=2"))
    assert tree(tmp_path) == before


def test_a_renamed_checkpoint_is_named_and_not_used(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--ckpt_interval=2", "--keep_last=5", "--schedule_steps=8"]
    train.main(small_args(tiny_data, out, "--max_steps=4", *args))
    os.rename(out / "ckpt_0000002", out / "ckpt_0000009")  # by hand: now the newest by name
    moved = tree(out / "ckpt_0000009")
    capsys.readouterr()
    train.main(small_args(tiny_data, out, "--max_steps=6", *args))
    said = capsys.readouterr().out
    assert (f"{out}/ckpt_0000009: its meta.json says step 2, its name says 9 (renamed or copied by hand?); not used"
            in said)
    assert f"resuming from {out}/ckpt_0000004 at step 4" in said
    assert tree(out / "superseded" / "ckpt_0000009") == moved  # set aside whole, not deleted
    assert sorted(d for d in os.listdir(out) if d.startswith("ckpt_")) == ["ckpt_0000004", "ckpt_0000006"]
    steps = [json.loads(l)["step"] for l in open(out / "metrics.jsonl") if "loss" in l]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 3 and 4 were not trained again


def test_a_checkpoint_of_a_newer_nano360_is_named(tiny_data, tmp_path):
    out = tmp_path / "run"
    train.main(small_args(tiny_data, out, "--max_steps=2"))
    ckpt = out / "ckpt_0000002"
    meta = json.load(open(ckpt / "meta.json"))
    meta["config"]["train"]["muon_momentum"] = 0.95  # a key from the future
    meta["git"] = "f00dfeed1234567890"
    json.dump(meta, open(ckpt / "meta.json", "w"), indent=1)
    reseal(str(ckpt))
    before = tree(out)
    with pytest.raises(ConfigError, match=rf"^{ckpt}/meta.json \(written by nano360 f00dfeed1234\): keys this "
                                          r"nano360 \(.*\) does not know: muon_momentum; a newer nano360 wrote it"):
        train.main(small_args(tiny_data, out, "--max_steps=4"))
    assert {k: v for k, v in tree(out).items() if k != "LOCK"} == {k: v for k, v in before.items() if k != "LOCK"}


def test_init_from_a_folder_says_what_to_give(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=rf"^--init_from={tmp_path} is a folder: give a file of weights"):
        train.main(small_args(tiny_data, tmp_path / "run", "--max_steps=1", f"--init_from={tmp_path}"))
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
