"""release.py: a run packaged as a release (Hugging Face folders, tokenizer, data manifest and
order, reports, cards, SHA256SUMS), and `verify`, which passes on it and names the file of each
damage: a flipped byte, a swapped checkpoint, an edited metrics line, a file added or lost."""
import json, os, re, shutil

import pytest
import torch

import release
import train
from checkpoint import load_model
from config import ConfigError
from helpers import small_args


@pytest.fixture(scope="module")
def packaged(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("release")
    args = small_args(tiny_data, str(tmp / "run"), "--max_steps=4", "--ckpt_interval=2",
                      "--eval_interval=2", "--keep_last=10")
    train.main(args)
    assert release.main([*args, str(tmp / "rel")]) == 0
    return args, tmp / "run", tmp / "rel"


def damaged(rel, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(rel, copy)
    return copy


def test_a_release_holds_the_run_and_verify_passes(packaged, capsys):
    args, run, rel = packaged
    assert sorted(os.listdir(rel / "checkpoints")) == ["ckpt_0000002", "ckpt_0000004"]
    assert release.verify(str(rel)) == []
    out = capsys.readouterr().out
    assert "every check passed" in out and "FAIL" not in out
    # SHA256SUMS in sha256sum's format, over every file but itself and DONE
    listed = [line.split("  ", 1)[1] for line in (rel / release.SUMS).read_text().splitlines()]
    assert listed == release.files_of(str(rel)) and "run/metrics.jsonl" in listed
    # the checkpoint folders load in transformers and give our logits
    transformers = pytest.importorskip("transformers")
    ours, _, meta = load_model(str(run / "ckpt_0000004"), "cpu")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(rel / "checkpoints" / "ckpt_0000004")).eval()
    x = torch.randint(0, 500, (2, 16))
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x).logits, atol=1e-5)
    assert json.loads((rel / "model" / "nano360.json").read_text())["step"] == 4
    # the cards' figures are the run's
    card = (rel / "README.md").read_text()
    assert card.startswith("---\nlicense: other\nlanguage:\n- en\n- zh\n")
    assert f"A {ours.num_params():,}-parameter decoder" in card
    assert f"{meta['data_position']['tokens']:,} tokens" in card
    vals = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in l]
    for k, v in vals[-1]["val"].items():
        assert f"| {k} | {v:.4f} |" in card
    manifest = json.loads((rel / "data" / "manifest.json").read_text())
    data_card = (rel / "DATA_CARD.md").read_text()
    for name, s in manifest["sources"].items():
        assert f"| {name} | {s['documents']:,} | {s['characters']:,} | {s['train_tokens']:,} |" in data_card
    order = json.loads((rel / "data" / "order.json").read_text())
    assert order["seed"] == meta["config"]["train"]["seed"] and order["manifest_sha256"] == meta["manifest_sha256"]


def fails(rel):
    return release.verify(str(rel), out=lambda line: None)


def test_verify_names_the_file_of_each_damage(packaged, tmp_path):
    _, _, rel = packaged
    for name in release.files_of(str(rel)):  # a flipped byte in any file
        copy = damaged(rel, tmp_path / name.replace("/", "_"))
        path = copy / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))
        got = fails(copy)
        assert got and got[0] == f"{path}: sha256 differs from SHA256SUMS's", (name, got)
    copy = damaged(rel, tmp_path / "swap")  # two checkpoints swapped
    a, b = (copy / "checkpoints" / c / "model.safetensors" for c in ("ckpt_0000002", "ckpt_0000004"))
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    assert [f.split(":")[0] for f in fails(copy)] == [str(a), str(b)]
    copy = damaged(rel, tmp_path / "metrics")  # an edited metrics line
    m = copy / "run" / "metrics.jsonl"
    m.write_text(re.sub(r'"loss": [0-9.]+', '"loss": 1.0', m.read_text(), count=1))
    assert fails(copy) == [f"{m}: sha256 differs from SHA256SUMS's"]
    copy = damaged(rel, tmp_path / "added")  # a file added, a file lost
    (copy / "model" / "extra.py").write_text("print('hi')\n")
    (copy / "tokenizer" / "tokenizer.tiktoken.json").unlink()
    assert fails(copy) == [f"{copy}/tokenizer/tokenizer.tiktoken.json: missing (listed in SHA256SUMS)",
                           f"{copy}/model/extra.py: not listed in SHA256SUMS"]


def test_package_writes_nothing_over_what_is_there(packaged, tmp_path):
    args, _, rel = packaged
    before = {p: p.stat().st_mtime_ns for p in rel.rglob("*")}
    with pytest.raises(ConfigError, match="already there"):
        release.package(release.load_config(args)[0], str(rel))
    assert {p: p.stat().st_mtime_ns for p in rel.rglob("*")} == before
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        release.main([*args, f"--out_dir={tmp_path}/none", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def test_verify_recomputes_each_checkpoints_loss_on_the_released_shards(packaged, tiny_data, tmp_path):
    args, run, rel = packaged
    # the loss each checkpoint records is the run's own validation at that step (metrics.jsonl)
    vals = {json.loads(l)["step"]: json.loads(l)["val"] for l in (run / "metrics.jsonl").read_text().splitlines()
            if '"val"' in l}
    for step in (2, 4):
        rec = json.loads((rel / "checkpoints" / f"ckpt_{step:07d}" / "nano360.json").read_text())["val_loss"]
        assert rec.keys() == vals[step].keys()
        assert all(abs(rec[k] - vals[step][k]) < 1e-6 for k in rec), (rec, vals[step])
    assert fails_with(rel, tiny_data) == []
    # the weights of two checkpoints swapped and SHA256SUMS written again: the sums pass, the losses do not
    copy = damaged(rel, tmp_path / "swap")
    a, b = (copy / "checkpoints" / c / "model.safetensors" for c in ("ckpt_0000002", "ckpt_0000004"))
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    release.write_sums(str(copy))
    assert fails(copy) == []
    got = fails_with(copy, tiny_data)
    assert [f.split(":")[0] for f in got] == [str(a), str(b)] and "validation loss" in got[0]
    # shards from another run: a shard changed, or another manifest
    other = tmp_path / "shards"
    shutil.copytree(tiny_data, other)
    shard = next(p for p in sorted(other.glob("*.bin")))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    got = fails_with(rel, other)
    assert len(got) == 1 and got[0].startswith(f"{shard}: sha256") , got
    m = other / "manifest.json"
    m.write_text(m.read_text().replace('"val_frac"', '"val_frac" ', 1))
    assert fails_with(rel, other)[0] == f"{m}: not the manifest of {rel}/data/manifest.json"


def fails_with(rel, shards):
    return release.verify(str(rel), str(shards), out=lambda line: None)


def test_verify_rebuilds_each_checkpoints_last_batch_in_the_released_order(packaged, tiny_data, tmp_path):
    import hashlib
    from data import Batches
    _, _, rel = packaged
    order = json.loads((rel / "data" / "order.json").read_text())
    b = Batches(str(tiny_data), order["seq_len"], order["global_batch"], order["seed"], False)
    for step in (2, 4):  # the record: the whole global batch of the last step trained, as 2 ranks see it
        meta = json.loads((rel / "checkpoints" / f"ckpt_{step:07d}" / "nano360.json").read_text())
        rows = torch.cat([b.batch(step - 1, r, 2) for r in range(2)]).numpy()
        assert meta["data_position"]["last_batch_sha256"] == hashlib.sha256(rows.tobytes()).hexdigest()
    assert fails_with(rel, tiny_data) == []
    # the order changed (another seed), SHA256SUMS written again: each checkpoint's batch differs
    copy = damaged(rel, tmp_path / "order")
    o = copy / "data" / "order.json"
    o.write_text(o.read_text().replace(f'"seed": {order["seed"]}', f'"seed": {order["seed"] + 1}'))
    release.write_sums(str(copy))
    got = fails_with(copy, tiny_data)
    assert len(got) == 3 and all(f.startswith(f"{o}: step ") for f in got), got  # 2 checkpoints and model/


def test_a_checkpoint_without_a_batch_hash_is_said_not_failed(packaged, tiny_data, tmp_path):
    _, _, rel = packaged  # saved by an older nano360: no last_batch_sha256
    copy = damaged(rel, tmp_path / "old")
    m = copy / "checkpoints" / "ckpt_0000002" / "nano360.json"
    meta = json.loads(m.read_text())
    del meta["data_position"]["last_batch_sha256"]
    m.write_text(json.dumps(meta))
    release.write_sums(str(copy))
    lines = []
    assert release.verify(str(copy), str(tiny_data), out=lines.append) == []
    assert sum("no batch hash recorded" in line for line in lines) == 1
