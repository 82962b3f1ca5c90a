"""release.py: one command from raw text to a release (curation, tokenize, training, the sweep,
then Hugging Face folders, tokenizer, data manifest and order, reports, cards, SHA256SUMS), and
`verify`, which passes on it and names the file of each damage: a flipped byte, a swapped
checkpoint, an edited metrics line, shards of another run, another data order. The analyses
(the sweep's losses, memorization, tasks) and `data.py show` from the release alone equal the
run's."""
import contextlib, io, json, os, re, shutil

import pytest
import torch

import data
import eval as ev
import release
from checkpoint import load_model
from config import ConfigError
from helpers import ROOT, TINY, small_args

TASKS = os.path.join(ROOT, "data", "evals")


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """data/tiny as raw text, through the one command: (args, out_dir, release, token shards)."""
    tmp = tmp_path_factory.mktemp("release")
    shards = tmp / "tokens"
    args = small_args(shards, str(tmp / "run"), "--max_steps=4", "--ckpt_interval=2",
                      "--eval_interval=2", "--keep_last=10", f"--source_dir={TINY}",
                      f"--clean_dir={tmp}/clean", f"--docs_dir={tmp}/dedup",
                      f"--tokenizer={tmp}/tok.tiktoken", "--tokenizer_sample=100000000")
    assert release.main([*args, str(tmp / "rel"), f"--tasks={TASKS}"]) == 0
    return args, tmp / "run", tmp / "rel", shards


def damaged(rel, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(rel, copy)
    return copy


def test_a_release_holds_the_run_and_verify_passes(packaged, capsys):
    args, run, rel, shards = packaged
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
    last = ev.read_evals(str(run / "evals.jsonl"))[-1]  # the sweep's figures of the last checkpoint
    figures = [(k, v) for k, v in last.items() if isinstance(v, float)]
    assert last["step"] == 4 and len(figures) > 40 and all(f"| {k} | {v:.4f} |" in card for k, v in figures)
    manifest = json.loads((rel / "data" / "manifest.json").read_text())
    data_card = (rel / "DATA_CARD.md").read_text()
    for name, s in manifest["sources"].items():
        assert f"| {name} | {name[:2] if name != 'code' else 'code'} | {s['documents']:,} | {s['characters']:,} | {s['train_tokens']:,} |" in data_card
    assert "datasets:\n" + "".join(f"- {name}\n" for name in sorted(manifest["sources"])) in card
    # its curation rows: each stage's report of the run, per source (en: 2 documents cut by clean's rules)
    for stage in ("clean", "dedup"):
        report = json.loads((run.parent / stage / "report.json").read_text())
        assert json.loads((rel / "curation" / f"{stage}.json").read_text()) == report
        assert f"### {stage} (`curation/{stage}.json`)" in data_card
        for name, s in report["sources"].items():
            why = ", ".join(f"{k} {v:,}" for k, v in sorted(s["removed"].items()))
            gone = 100 * (s["documents"] - s["kept"]) / s["documents"]
            assert f"| {name} | {s['documents']:,} | {s['kept']:,} | {gone:.1f}% | {100 * s['bytes_out'] / s['bytes_in']:.1f}% | {why} |" in data_card
    assert sum(json.loads((run.parent / "clean" / "report.json").read_text())["sources"]["en"]["removed"].values()) > 0
    order = json.loads((rel / "data" / "order.json").read_text())
    assert order["seed"] == meta["config"]["train"]["seed"] and order["manifest_sha256"] == meta["manifest_sha256"]


def fails(rel):
    return release.verify(str(rel), out=lambda line: None)


def test_verify_names_the_file_of_each_damage(packaged, tmp_path):
    _, _, rel, shards = packaged
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
    prefix = [f"{m} to step {s}: its first" for s in (2, 4, 4)]  # the log each checkpoint recorded
    got = fails(copy)
    assert got[0] == f"{m}: sha256 differs from SHA256SUMS's" and [f[:len(p)] for f, p in zip(got[1:], prefix)] == prefix
    release.write_sums(str(copy))  # SHA256SUMS written again: the checkpoints' records still tell
    assert [f[:len(p)] for f, p in zip(fails(copy), prefix)] == prefix and len(fails(copy)) == 3
    copy = damaged(rel, tmp_path / "added")  # a file added, a file lost
    (copy / "model" / "extra.py").write_text("print('hi')\n")
    (copy / "tokenizer" / "tokenizer.tiktoken.json").unlink()
    assert fails(copy) == [f"{copy}/tokenizer/tokenizer.tiktoken.json: missing (listed in SHA256SUMS)",
                           f"{copy}/model/extra.py: not listed in SHA256SUMS"]


def test_package_writes_nothing_over_what_is_there(packaged, tmp_path):
    args, _, rel, _ = packaged
    before = {p: p.stat().st_mtime_ns for p in rel.rglob("*")}
    with pytest.raises(ConfigError, match="already there"):
        release.package(release.load_config(args)[0], str(rel))
    assert {p: p.stat().st_mtime_ns for p in rel.rglob("*")} == before
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        release.main(["package", *args, f"--out_dir={tmp_path}/none", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="already there"):  # before any step runs
        release.main([*args, f"--out_dir={tmp_path}/none", str(rel)])
    assert not (tmp_path / "none").exists()


def test_the_one_command_again_redoes_nothing_and_packages_the_same_bytes(packaged, tmp_path, capfd):
    args, run, rel, shards = packaged
    made = [run / "metrics.jsonl", run / "evals.jsonl", run / "ckpt_0000004" / "meta.json",
            shards / "manifest.json", run.parent / "clean" / "DONE", run.parent / "dedup" / "DONE"]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in made}
    assert release.main([*args, str(tmp_path / "again"), f"--tasks={TASKS}"]) == 0
    said = capfd.readouterr()
    assert "is at max_steps: nothing to train" in said.out and "== release 4/4: package" in said.out
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in made} == before
    sums = [(tmp_path / "again" / release.SUMS).read_text(), (rel / release.SUMS).read_text()]
    a, b = ([line for line in s.splitlines() if not line.endswith("  README.md")] for s in sums)
    assert a == b and len(a) > 30  # the model card names its folder; every other byte is the same
    with pytest.raises(ConfigError, match="source_dir=.*not there"):
        release.main([*args, f"--source_dir={tmp_path}/raw", str(tmp_path / "r")])


def test_the_analyses_from_the_release_alone_equal_the_runs(packaged):
    # loss per source, bits per byte, memorization and the tasks of each checkpoint, from the
    # release's Hugging Face folders and the released shards: the rows the run's sweep wrote
    _, run, rel, shards = packaged
    rows = ev.sweep(str(rel), TASKS, shards=str(shards))
    theirs = ev.read_evals(str(run / "evals.jsonl"))
    assert [r["ckpt"] for r in rows] == ["ckpt_0000002", "ckpt_0000004"] and rows == theirs
    assert {"loss/en", "loss/zh", "loss/code", "mem/exact", "mem_heldout/frac", "arc_easy/acc"} <= rows[0].keys()
    assert rows[0]["loss/all"] != rows[1]["loss/all"]
    assert (rel.parent / "rel.evals" / "evals.md").exists() and fails(rel) == []  # nothing written into it


def test_verify_computes_a_chosen_checkpoints_evaluation_again(packaged, tmp_path):
    _, _, rel, shards = packaged
    lines = []
    assert release.verify(str(rel), str(shards), out=lines.append, evals="4", tasks=TASKS) == []
    assert any(re.search(r"ckpt_0000004: \d+ figures of its evaluation computed again", l) for l in lines)
    copy = damaged(rel, tmp_path / "evals")  # a figure edited, SHA256SUMS written again
    log = copy / "run" / "evals.jsonl"
    rows = [json.loads(l) for l in log.read_text().splitlines()]
    rows[-1]["arc_easy/acc"] += 0.25
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    release.write_sums(str(copy))
    got = release.verify(str(copy), str(shards), out=lambda l: None, evals="ckpt_0000004", tasks=TASKS)
    assert len(got) == 1 and got[0].startswith(f"{log}: ckpt_0000004's arc_easy/acc"), got
    other = tmp_path / "tasks"  # a task file other than the one the row was scored on
    shutil.copytree(TASKS, other)
    (other / "arc_easy.jsonl").write_text("\n".join((other / "arc_easy.jsonl").read_text().splitlines()[:-1]) + "\n")
    got = release.verify(str(rel), str(shards), out=lambda l: None, evals="4", tasks=str(other))
    assert got == [f"{other}/arc_easy.jsonl: not the task file {rel}/run/evals.jsonl records for ckpt_0000004"]


def test_data_show_from_the_release_prints_the_runs_batches(packaged):
    _, run, rel, shards = packaged

    def show(*argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert data.main(["show", *argv]) == 0
        return out.getvalue()
    ckpt = rel / "checkpoints" / "ckpt_0000004"
    for step in ([], ["--step", "1"]):
        theirs = show("--ckpt", str(run / "ckpt_0000004"), *step)
        assert show("--ckpt", str(ckpt), f"--shards={shards}", *step) == theirs and theirs.count("=== step") == 4
    with pytest.raises(ConfigError, match="--shards"):
        data.main(["show", "--ckpt", str(ckpt)])


def test_verify_recomputes_each_checkpoints_loss_on_the_released_shards(packaged, tmp_path):
    args, run, rel, shards = packaged
    # the loss each checkpoint records is the run's own validation at that step (metrics.jsonl)
    vals = {json.loads(l)["step"]: json.loads(l)["val"] for l in (run / "metrics.jsonl").read_text().splitlines()
            if '"val"' in l}
    for step in (2, 4):
        rec = json.loads((rel / "checkpoints" / f"ckpt_{step:07d}" / "nano360.json").read_text())["val_loss"]
        assert rec.keys() == vals[step].keys()
        assert all(abs(rec[k] - vals[step][k]) < 1e-6 for k in rec), (rec, vals[step])
    assert fails_with(rel, shards) == []
    # the weights of two checkpoints swapped and SHA256SUMS written again: the sums pass, the losses do not
    copy = damaged(rel, tmp_path / "swap")
    a, b = (copy / "checkpoints" / c / "model.safetensors" for c in ("ckpt_0000002", "ckpt_0000004"))
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    release.write_sums(str(copy))
    assert fails(copy) == []
    got = fails_with(copy, shards)
    assert [f.split(":")[0] for f in got] == [str(a), str(b)] and "validation loss" in got[0]
    # shards from another run: a shard changed, or another manifest
    other = tmp_path / "shards"
    shutil.copytree(shards, other)
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


def test_verify_rebuilds_each_checkpoints_last_batch_in_the_released_order(packaged, tmp_path):
    import hashlib
    from data import Batches
    _, _, rel, shards = packaged
    order = json.loads((rel / "data" / "order.json").read_text())
    b = Batches(str(shards), order["seq_len"], order["global_batch"], order["seed"], False)
    for step in (2, 4):  # the record: the whole global batch of the last step trained, as 2 ranks see it
        meta = json.loads((rel / "checkpoints" / f"ckpt_{step:07d}" / "nano360.json").read_text())
        rows = torch.cat([b.batch(step - 1, r, 2) for r in range(2)]).numpy()
        assert meta["data_position"]["last_batch_sha256"] == hashlib.sha256(rows.tobytes()).hexdigest()
    assert fails_with(rel, shards) == []
    # the order changed (another seed), SHA256SUMS written again: each checkpoint's batch differs
    copy = damaged(rel, tmp_path / "order")
    o = copy / "data" / "order.json"
    o.write_text(o.read_text().replace(f'"seed": {order["seed"]}', f'"seed": {order["seed"] + 1}'))
    release.write_sums(str(copy))
    got = fails_with(copy, shards)
    assert len(got) == 3 and all(f.startswith(f"{o}: step ") for f in got), got  # 2 checkpoints and model/


def test_a_checkpoint_without_a_batch_hash_is_said_not_failed(packaged, tmp_path):
    _, _, rel, shards = packaged  # saved by an older nano360: no last_batch_sha256
    copy = damaged(rel, tmp_path / "old")
    m = copy / "checkpoints" / "ckpt_0000002" / "nano360.json"
    meta = json.loads(m.read_text())
    del meta["data_position"]["last_batch_sha256"]
    m.write_text(json.dumps(meta))
    release.write_sums(str(copy))
    lines = []
    assert release.verify(str(copy), str(shards), out=lines.append) == []
    assert sum("no batch hash recorded" in line for line in lines) == 1


def test_a_crystalcoder_layout_run_releases_folders_transformers_loads(packaged, tmp_path):
    # LayerNorm with biases, partial rotary, muP: nano360's layout (hf_modeling.py), each
    # checkpoint's logits in transformers within 1e-5 of ours
    import train
    transformers = pytest.importorskip("transformers")
    _, _, _, shards = packaged
    args = small_args(shards, str(tmp_path / "run"), "--max_steps=2", "--ckpt_interval=1", "--eval_interval=1",
                      "--keep_last=10", "--norm=layernorm", "--rotary_dim=4", "--qkv_bias=true",
                      "--attn_out_bias=true", "--ffn_bias=true", "--tie_embeddings=true", "--embed_mult=14.6",
                      "--logit_mult=0.5", "--qk_scale_by_d=true")
    train.main(args)
    assert release.main(["package", *args, str(tmp_path / "rel")]) == 0
    assert release.verify(str(tmp_path / "rel"), str(shards), out=lambda l: None) == []
    x = torch.randint(0, 500, (2, 16))
    for step in (1, 2):
        folder = tmp_path / "rel" / "checkpoints" / f"ckpt_{step:07d}"
        assert (folder / "modeling_nano360.py").exists()
        ours = load_model(str(tmp_path / "run" / f"ckpt_{step:07d}"), "cpu")[0]
        theirs = transformers.AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True).eval()
        with torch.no_grad():
            assert (ours(x) - theirs(x).logits).abs().max() < 1e-5
    assert "trust_remote_code=True" in (tmp_path / "rel" / "README.md").read_text()


def test_the_one_command_under_torchrun_runs_each_step_on_every_rank(packaged, tmp_path):
    import subprocess, sys
    from helpers import free_port
    _, _, _, shards = packaged
    args = small_args(shards, str(tmp_path / "run"), "--max_steps=4", "--ckpt_interval=2", "--eval_interval=2",
                      "--keep_every=2")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={free_port()}", "release.py", *args, str(tmp_path / "rel")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.count("== release 2/4: training") == 1 and "1 micro-batch of 4 x 2 ranks" in r.stdout
    meta = json.loads((tmp_path / "rel" / "model" / "nano360.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 4
    assert [r["ckpt"] for r in ev.read_evals(str(tmp_path / "run" / "evals.jsonl"))] == ["ckpt_0000002", "ckpt_0000004"]
    assert fails_with(tmp_path / "rel", shards) == []


def test_verify_loads_each_checkpoint_in_transformers_too(packaged, monkeypatch):
    # with the shards, each folder is loaded by transformers' class for its layout (never by the
    # folder's own code) and must give nano360's logits on a validation window
    _, _, rel, shards = packaged
    lines = []
    assert release.verify(str(rel), str(shards), out=lines.append) == []
    assert sum("in transformers (LlamaForCausalLM): nano360's logits" in l for l in lines) == 3
    real = release.transformers_model

    def off(folder):  # a transformers model that computes something else than the weights say
        model = real(folder)
        with torch.no_grad():
            model.model.norm.weight.mul_(1.01)
        return model
    monkeypatch.setattr(release, "transformers_model", off)
    got = release.verify(str(rel), str(shards), out=lambda l: None)
    assert [g.split(":")[0] for g in got] == [f"{rel}/checkpoints/ckpt_0000002/config.json",
                                             f"{rel}/checkpoints/ckpt_0000004/config.json", f"{rel}/model/config.json"]
    assert "transformers' logits differ from nano360's" in got[0]
