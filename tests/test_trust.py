"""Checkpoints tried as a hostile or unlucky user would: planted code in every file through every
command that reads one, damaged and truncated files, retention after a rollback, a second launch,
a torn metrics line, a full disk, a changed data order, nonsense values, and SIGKILL at random
points of saving and pruning. Everything goes through the commands (train.main, eval.main), so
benchmarks/trust_scenarios.py runs the planted-code cases against any checkout."""
import json, os, random, resource, shutil, signal, socket, subprocess, sys

import pytest
import torch

import data
import eval as evaluate
import stage
import tokenizer
import train
from config import ConfigError, load_config
from helpers import (COMMANDS, ROOT, Evil, dotted_global, outcome, plant_entries, reseal, resume_args, sha,
                     small_args, tokenize_tiny)


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    """A run with checkpoints at steps 1 and 2; each test works on a copy."""
    out = tmp_path_factory.mktemp("trust") / "run"
    train.main(small_args(tiny_data, out, "--max_steps=2", "--ckpt_interval=1", "--keep_last=5", "--eval_interval=100"))
    return out


@pytest.fixture
def copy(run, tmp_path):
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


# --------------------------------------------------------------------------------------------
# 1. loading runs no code

@pytest.mark.parametrize("plant", ["metadata", "entries"])
def test_planted_code_never_runs(copy, tiny_data, tmp_path, plant):
    marker = tmp_path / "pwned"
    ckpt = str(copy / "ckpt_0000002")
    if plant == "metadata":
        open(os.path.join(ckpt, ".metadata"), "wb").write(dotted_global(marker))
    else:
        plant_entries(ckpt, marker)
    reseal(ckpt)
    for name, command in COMMANDS.items():
        result = outcome(lambda: command(tiny_data, copy, ckpt))
        assert not marker.exists(), f"{name} ran the code planted in {plant}"
        assert result.startswith("error: ") and (".metadata" in result if plant == "metadata" else ".distcp" in result), \
            (name, result)


def test_planted_rng_and_init_from_files_run_nothing(copy, tiny_data, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = str(copy / "ckpt_0000002")
    torch.save(Evil(marker), os.path.join(ckpt, "rng_0.pt"))
    reseal(ckpt)
    result = outcome(lambda: train.main(resume_args(tiny_data, copy, f"--resume={ckpt}")))
    assert not marker.exists() and result.startswith("error: ") and "rng_0.pt" in result, result
    torch.save({"model": Evil(marker)}, tmp_path / "w.pt")
    result = outcome(lambda: train.main(small_args(tiny_data, tmp_path / "fresh", "--max_steps=1", "--warmup_steps=1",
                                                   f"--init_from={tmp_path / 'w.pt'}")))
    assert not marker.exists() and result.startswith("error: --init_from=") and "w.pt" in result, result


# --------------------------------------------------------------------------------------------
# 2. damage is detected and named; --resume=auto falls back

def test_flipped_bytes_are_detected_in_every_position(copy, tiny_data):
    ckpt = copy / "ckpt_0000002"
    shard = ckpt / "__0_0.distcp"
    good = shard.read_bytes()
    for pos in random.Random(0).sample(range(len(good)), 5):
        shard.write_bytes(good[:pos] + bytes([good[pos] ^ 0x01]) + good[pos + 1:])
        result = outcome(lambda: evaluate.load(str(ckpt)))
        assert result.startswith("error: ") and "__0_0.distcp" in result and "damaged" in result, (pos, result)


def test_a_sweep_skips_a_damaged_checkpoint_and_says_so(copy, capsys):
    shard = copy / "ckpt_0000002" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    rows = evaluate.sweep(str(copy), "", seqs=2)
    assert [r["ckpt"] for r in rows] == ["ckpt_0000001"]
    assert f"skipped {copy / 'ckpt_0000002'}: {shard}: sha256 differs" in capsys.readouterr().err


def test_an_edited_meta_json_is_detected(copy, tiny_data):
    ckpt = copy / "ckpt_0000002"
    meta = json.load(open(ckpt / "meta.json"))
    meta["step"] = 1
    json.dump(meta, open(ckpt / "meta.json", "w"))
    result = outcome(lambda: train.main(resume_args(tiny_data, copy, f"--resume={ckpt}")))
    assert result.startswith("error: ") and "meta.json" in result, result


@pytest.mark.parametrize("name", ["__0_0.distcp", ".metadata", "meta.json", "rng_0.pt"])
def test_a_truncated_file_is_named_and_auto_resume_falls_back(copy, tiny_data, capsys, name):
    ckpt = copy / "ckpt_0000002"
    path = ckpt / name
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    result = outcome(lambda: train.main(resume_args(tiny_data, copy, f"--resume={ckpt}")))
    assert result.startswith("error: ") and name in result, result
    capsys.readouterr()
    assert outcome(lambda: train.main(resume_args(tiny_data, copy))) == "ok"  # --resume=auto
    said = capsys.readouterr().out
    assert f"ckpt_0000002 is damaged ({ckpt / name}" in said and "resuming from" in said and "ckpt_0000001" in said
    assert (copy / "superseded" / "ckpt_0000002" / name).exists()  # set aside, not deleted
    assert json.load(open(copy / "ckpt_0000003" / "meta.json"))["step"] == 3


# --------------------------------------------------------------------------------------------
# 3. retention follows the run's history

def test_resuming_from_an_older_checkpoint_keeps_the_newer_work(tiny_data, tmp_path):
    out = tmp_path / "run"
    args = small_args(tiny_data, out, "--max_steps=6", "--ckpt_interval=2", "--eval_interval=100", "--keep_last=3")
    train.main(args)
    newer = {n: sha(out / "ckpt_0000006" / n) for n in os.listdir(out / "ckpt_0000006")}
    train.main(args[:-1] + ["--keep_last=1", f"--resume={out / 'ckpt_0000002'}"])
    done = sorted(d for d in os.listdir(out) if d.startswith("ckpt_"))
    assert done == ["ckpt_0000006"]
    assert json.load(open(out / "ckpt_0000006" / "meta.json"))["step"] == 6  # the new one: it stays
    kept = out / "superseded" / "ckpt_0000006"  # the old one: kept aside, whole
    assert {n: sha(kept / n) for n in os.listdir(kept)} == newer and (out / "superseded" / "ckpt_0000004").is_dir()


def test_folders_without_done_do_not_count_toward_keep_last(tiny_data, tmp_path):
    out = tmp_path / "run"
    os.makedirs(out / "ckpt_0000099")  # a copy that never finished, say
    train.main(small_args(tiny_data, out, "--max_steps=2", "--ckpt_interval=1", "--eval_interval=100", "--keep_last=1",
                          "--resume=auto"))
    assert stage.is_done(str(out / "ckpt_0000002"))


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
count, at, match = [0], int(os.environ["KILL_AT"]), os.environ.get("KILL_MATCH", "")
def counted(f):
    def g(*a, **k):
        result = f(*a, **k)
        count[0] += match in str(a[0]) if a else not match
        if count[0] == at:  # right after the at-th call
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return g
for name in os.environ.get("KILL_IN", "replace rename unlink rmdir fsync").split():  # every step of a save and a prune
    setattr(os, name, counted(getattr(os, name)))
import train
train.main(sys.argv[1:])
print("EVENTS", count[0])
"""


def test_sigkill_while_pruning_leaves_no_complete_looking_folder_without_its_data(tiny_data, tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=ROOT))
    out = tmp_path / "run"
    args = small_args(tiny_data, out, "--max_steps=4", "--ckpt_interval=2", "--eval_interval=100", "--keep_last=1")
    p = subprocess.run([sys.executable, str(script), *args], env={**os.environ, "KILL_AT": "1", "KILL_IN": "unlink",
                       "KILL_MATCH": "__0_0.distcp"}, capture_output=True, text=True, timeout=300)  # pruning ckpt_2, a file gone
    assert not (out / "ckpt_0000002" / "__0_0.distcp").exists() or not stage.is_done(str(out / "ckpt_0000002"))
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    for d in sorted(os.listdir(out)):
        if d.startswith("ckpt_") and stage.is_done(str(out / d)):
            assert outcome(lambda: evaluate.load(str(out / d))) == "ok", d
    assert outcome(lambda: train.main(args)) == "ok"


def test_sigkill_at_random_points_of_saving_and_pruning(tiny_data, tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=ROOT))
    args = lambda out: small_args(tiny_data, out, "--max_steps=6", "--ckpt_interval=2", "--eval_interval=100",
                                  "--keep_last=1", "--schedule_steps=6")
    first = subprocess.run([sys.executable, str(script), *args(tmp_path / "straight")], env={**os.environ, "KILL_AT": "0"},
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    events = int(first.stdout.split("EVENTS")[-1])
    straight = [(r["step"], r["loss"]) for r in map(json.loads, open(tmp_path / "straight" / "metrics.jsonl")) if "loss" in r]
    for seed in range(4):
        at = random.Random(seed).randint(1, events)
        out = tmp_path / f"killed{seed}"
        p = subprocess.run([sys.executable, str(script), *args(out)], env={**os.environ, "KILL_AT": str(at)},
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == -signal.SIGKILL, (at, p.stderr[-2000:])
        for ckpt in (str(out / d) for d in os.listdir(out) if d.startswith("ckpt_") and stage.is_done(str(out / d))):
            assert outcome(lambda: evaluate.load(ckpt)) == "ok", (at, ckpt)  # whatever looks complete is
        assert outcome(lambda: train.main(args(out))) == "ok", at  # --resume=auto
        resumed = [(r["step"], r["loss"]) for r in map(json.loads, open(out / "metrics.jsonl")) if "loss" in r]
        assert resumed == straight, at


# --------------------------------------------------------------------------------------------
# 4. the run directory: a lock, torn metrics, a full disk

def test_a_second_launch_is_refused_and_a_dead_runs_lock_taken_over(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    args = small_args(tiny_data, out, "--max_steps=400", "--ckpt_interval=2", "--eval_interval=1000")
    p = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    for line in p.stdout:
        if line.startswith("step      3/"):
            break
    result = outcome(lambda: train.main(args))
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert result.startswith("error: ") and "in use by another run" in result and f"{p.pid}" in result and \
        socket.gethostname() in result and str(out / "LOCK") in result, result
    capsys.readouterr()
    assert outcome(lambda: train.main(args[:-3] + ["--max_steps=4", "--ckpt_interval=2", "--eval_interval=1000"])) == "ok"
    assert "taking over the lock of a run that is gone" in capsys.readouterr().out


def test_a_torn_metrics_line_does_not_block_resume(copy, tiny_data):
    with open(copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # what a full disk leaves
    assert outcome(lambda: train.main(resume_args(tiny_data, copy))) == "ok"
    rows = [json.loads(line) for line in open(copy / "metrics.jsonl")]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]


def test_a_full_disk_during_a_save_names_the_place_and_keeps_the_last_checkpoint(copy, tiny_data):
    def small_files():  # every file at most 200 kB: the checkpoint's shard cannot be written
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    p = subprocess.run([sys.executable, "train.py", *resume_args(tiny_data, copy)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, preexec_fn=small_files)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr[-3000:]
    assert err[0].startswith(f"error: saving step 3 to {copy / '.tmp_ckpt_0000003'} failed: File too large") and \
        f"the checkpoint {copy / 'ckpt_0000002'} is intact" in err[0], err
    assert not (copy / ".tmp_ckpt_0000003").exists()
    assert outcome(lambda: train.main(resume_args(tiny_data, copy))) == "ok"  # room again: it goes on


# --------------------------------------------------------------------------------------------
# 5. resume refuses another data order; 6. nonsense values and devices

@pytest.mark.parametrize("change", ["--seq_len=16", "--seed=7", "--fim_rate=0.5", "--mixture=[(0, {'en': 1.0})]"])
def test_resume_refuses_a_change_of_data_order(copy, tiny_data, change):
    key = change[2:].split("=")[0]
    result = outcome(lambda: train.main(resume_args(tiny_data, copy, change)))
    assert result.startswith("error: ") and f"trained with {key}=" in result and "data order" in result, result


@pytest.mark.parametrize("flag", ["--lr=0", "--lr=-1", "--warmup_steps=-1", "--min_lr=1.0", "--grad_clip=-1", "--eps=0",
                                  "--beta1=1.5", "--val_frac=2.0", "--schedule_steps=-1", "--eval_seqs=-1",
                                  "--device=banana"])
def test_nonsense_values_are_one_line_errors_naming_the_key(flag):
    key = flag[2:].split("=")[0]
    with pytest.raises(ConfigError, match=f"{key}=.* must"):
        load_config([flag])


def test_a_device_this_machine_lacks_is_a_one_line_error(tiny_data, tmp_path):
    device = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, or a GPU where there is none
    result = outcome(lambda: train.main(small_args(tiny_data, tmp_path / "run", f"--device={device}")))
    assert result.startswith(f"error: device='{device}', but"), result


# --------------------------------------------------------------------------------------------
# 7. data input (the rest is in test_pipeline.py::test_bad_input_is_reported_not_fatal)

def test_sources_that_differ_only_in_unsafe_characters_stay_apart_and_a_good_data_dir_stays(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    chapters = [json.loads(line)["text"] for line in open(os.path.join(ROOT, "data", "tiny", "en.jsonl"))]
    with open(raw / "web.jsonl", "w") as f:
        for i, source in enumerate(["web a", "web_a", "web a", "web_a"]):
            f.write(json.dumps({"text": chapters[i], "source": source}) + "\n")
    out = str(tmp_path / "tokens")
    tokenize_tiny(out, 300, 0.25, docs=str(raw))
    manifest = data.load_manifest(out, hash_shards=True)
    files = {s["file"]: s["source"] for s in manifest["shards"]}
    assert sorted(set(files.values())) == ["web a", "web_a"] and len(files) == 4  # train + val of each, none shared
    enc = tokenizer.tokenizer_of(out, manifest)
    for source in ("web a", "web_a"):  # every token of each source's two chapters is in that source's shards
        want = sum(len(enc.encode_ordinary(chapters[i])) + 1 for i in range(4) if i % 2 == (source == "web_a"))
        assert sum(s["tokens"] for s in manifest["shards"] if s["source"] == source) == want
    before = {n: sha(os.path.join(out, n)) for n in os.listdir(out)}
    (raw / "more.jsonl").write_text(json.dumps({"text": chapters[5]}) + "\n{broken\n")
    tokenize_tiny(out, 300, 0.25, docs=str(raw))  # other input: the complete data_dir is not replaced
    assert {n: sha(os.path.join(out, n)) for n in os.listdir(out)} == before
