import json, math, os, signal, subprocess, sys

import pytest
import torch

import checkpoint
import stage
import train
from config import ConfigError, TrainConfig, load_config
from helpers import ROOT, small_args, tokenize_tiny
from model import GPT


def metrics(out_dir):
    return [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl"))]


def train_losses(out_dir):
    return [(r["step"], r["loss"]) for r in metrics(out_dir) if "loss" in r]


# --------------------------------------------------------------------------------------------
# config

def test_config_file_and_overrides(tmp_path):
    cfg, mcfg = load_config([os.path.join(ROOT, "config", "neo7b.py"), "--lr=1", "--dry_run", "--out_dir=123",
                                   "--n_kv_head=4", "--hash_shards=false"])
    assert (mcfg.head_dim, mcfg.n_layer, mcfg.n_kv_head) == (192, 28, 4)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.dry_run is True and cfg.out_dir == "123"
    assert cfg.hash_shards is False
    default, _ = load_config([])  # no file: config/toy.py
    assert default.out_dir == "out/toy" and default.docs_dir == "data/tiny"


def test_renamed_keys_still_read_with_a_note(tmp_path, capsys):
    # raw_data, data_dir and verify_data were renamed: an old config file, flag or checkpoint still reads
    import config
    config._noted.clear()
    old = tmp_path / "old.py"
    old.write_text("raw_data = 'corpus'\ndata_dir = 'corpus/tokens'\n")
    cfg, _ = load_config([str(old), "--verify_data=false"])
    assert (cfg.docs_dir, cfg.tokens_dir, cfg.hash_shards) == ("corpus", "corpus/tokens", False)
    notes = capsys.readouterr().err.splitlines()
    assert notes == [f"note: {old}:1: raw_data is now called docs_dir; read as docs_dir",
                     f"note: {old}:2: data_dir is now called tokens_dir; read as tokens_dir",
                     "note: --verify_data=false: verify_data is now called hash_shards; read as hash_shards"]
    saved = dict(train=dict(raw_data="a", data_dir="b", verify_data=True), model={})
    cfg, _ = config.config_from_dict(saved)
    assert (cfg.docs_dir, cfg.tokens_dir, cfg.hash_shards) == ("a", "b", True)
    assert capsys.readouterr().err == ""  # once per key and process


def config_error(argv):
    with pytest.raises(ConfigError) as e:
        load_config(argv)
    return str(e.value)


def test_config_errors_name_file_line_key_and_expectation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("# a config\nn_layer = 4\nn_layers = 4\n")
    hint = "`python train.py --help` lists every key"
    assert config_error([str(bad)]) == f"{bad}:3: unknown key 'n_layers' (did you mean 'n_layer'? {hint})"
    assert config_error(["--batchsize=3"]) == f"--batchsize=3: unknown key 'batchsize' (did you mean 'batch_size'? {hint})"
    bad.write_text("n_layer = '4'\n")
    assert config_error([str(bad)]) == f"{bad}:1: n_layer = '4' is str, expected int"
    assert config_error(["--max_steps=ten"]) == "--max_steps=ten: max_steps = 'ten' is str, expected int"
    assert config_error(["--qkv_bias=maybe"]) == "--qkv_bias=maybe: qkv_bias = 'maybe' is str, expected bool"
    assert config_error([str(tmp_path / "nope.py")]) == f"config file not found: {tmp_path / 'nope.py'}"
    bad.write_text("n_layer = 4\nd_model = (\n")
    assert config_error([str(bad)]).startswith(f"{bad}:2: syntax error")
    bad.write_text("n_layer = 4\nd_model = 1 / 0\n")
    assert config_error([str(bad)]) == f"{bad}:2: ZeroDivisionError: division by zero"
    assert "n_head=6 must be a multiple of n_kv_head=4" in config_error(["--n_head=6", "--n_kv_head=4"])
    assert "schedule='cosin' must be" in config_error(["--schedule=cosin"])
    assert "attn_impl='flash' must be 'auto', 'sdpa' or 'triton'" in config_error(["--attn_impl=flash"])
    assert config_error(["--lr"]) == "--lr: needs a value, as in --lr=VALUE"


def test_config_error_is_one_line_and_exit_code():
    r = subprocess.run([sys.executable, "train.py", "--n_layers=3"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr == ("error: --n_layers=3: unknown key 'n_layers' "
                        "(did you mean 'n_layer'? `python train.py --help` lists every key)\n")


def test_dry_run_prints_the_plan():
    r = subprocess.run([sys.executable, "train.py", "config/neo7b.py", "--dry_run", "--world_size=8"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "parameters  7,793,716,224 (7.79B); non-embedding 7,398,927,360 (7.40B)" in r.stdout
    assert "1536 x 8192 = 12,582,912 tokens/step: 8 GPUs x micro-batch 1 x 192 accumulation steps" in r.stdout
    # memory per GPU: fp32 params, grads and both AdamW moments sharded 8 ways, 16 bytes per parameter
    shards = [float(l.split()[-2]) for l in r.stdout.splitlines() if "(shard)" in l]
    assert sum(shards) == pytest.approx(16 * 7_793_716_224 / 8 / 2 ** 30, abs=0.02)


def test_memory_plan_activation_checkpointing_saves():
    cfg, mcfg = load_config(["config/neo7b.py", "--world_size=8"])
    with torch.device("meta"):
        model = GPT(mcfg)
    plan = model.estimate_memory(cfg.batch_size * cfg.seq_len, cfg.world_size)
    assert plan["activations, full checkpointing"] < plan["activations"] / 5
    assert plan["params fp32 (shard)"] == 4 * model.num_params() / 8


# --------------------------------------------------------------------------------------------
# schedules, against values worked by hand

def sched(**kw):
    base = dict(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    return TrainConfig(**{**base, **kw})


def test_schedules():
    c = sched(schedule="cosine")
    assert [train.lr_at(s, c) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])  # warmup
    assert train.lr_at(10, c) == pytest.approx(1.0)
    assert train.lr_at(60, c) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert train.lr_at(110, c) == pytest.approx(0.1)
    lin = sched(schedule="linear", schedule_steps=210)  # the line reaches min_lr at 210, past max_steps
    assert train.lr_at(110, lin) == pytest.approx(1.0 - 0.9 * 100 / 200)
    wsd = sched(schedule="wsd", decay_steps=20)
    assert train.lr_at(89, wsd) == 1.0 and train.lr_at(90, wsd) == pytest.approx(1 - 0.9 / 20)
    assert train.lr_at(109, wsd) == pytest.approx(0.1)
    neo = sched(schedule="cosine_exp", schedule_steps=210, decay_steps=40, min_lr=0.01)
    at70 = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 60 / 200))  # the cosine where the decay phase starts
    assert train.lr_at(70, neo) == pytest.approx(at70)
    assert train.lr_at(90, neo) == pytest.approx(at70 / 2)  # half-life decay_steps / 2
    assert train.lr_at(100, neo) == pytest.approx(at70 / 2 ** 1.5)
    floor = sched(schedule="cosine_exp", schedule_steps=210, decay_steps=40, min_lr=0.3)
    assert train.lr_at(109, floor) == 0.3


def test_a_run_shorter_than_its_warmup_runs_with_a_warning(tiny_data, tmp_path, capsys):
    # as in nanoGPT, nanochat and torchtitan: the rate just never reaches its peak
    cfg, _ = load_config(["--max_steps=10"])  # toy.py's warmup is 30 steps
    assert cfg.warmup_steps == 30 and capsys.readouterr().err == (
        "warning: warmup_steps=30 is longer than the run (max_steps=10): the learning rate stops short of lr=0.003\n")
    out = tmp_path / "short"
    train.main(small_args(tiny_data, out, "--max_steps=3", "--warmup_steps=8", "--lr=0.008"))
    assert [r["lr"] for r in metrics(out) if "lr" in r] == pytest.approx([0.001, 0.002, 0.003])  # (step + 1) / 8
    for flag in ("--warmup_steps=-1", "--lr=0"):
        with pytest.raises(ConfigError, match=f"{flag[2:].split('=')[0]}=.* must be"):
            load_config([flag])


# --------------------------------------------------------------------------------------------
# training, checkpoints, resume

def test_default_config_learns(tmp_path):
    # the toy model itself (config/toy.py), fewer steps: the validation loss falls
    out = tmp_path / "toy"
    train.main([f"--out_dir={out}", f"--tokens_dir={tmp_path / 'tokens'}", "--max_steps=30", "--batch_size=8",
                "--seq_len=128", "--warmup_steps=5",
                "--eval_interval=30", "--sample_tokens=8", "--eval_seqs=8"])
    val = [r["val"] for r in metrics(out) if "val" in r]
    assert [v for v in val] and val[0]["all"] > 8.0 and val[-1]["all"] < val[0]["all"] - 1.0
    assert set(val[-1]) == {"en", "zh", "code", "all"}


def test_resume_is_bitwise_identical(tiny_data, tmp_path):
    common = ["--schedule_steps=8", "--ckpt_interval=4", "--eval_interval=4"]
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    model = train.main(small_args(tiny_data, straight, "--max_steps=8", *common))
    train.main(small_args(tiny_data, halves, "--max_steps=4", *common))
    resumed = train.main(small_args(tiny_data, halves, "--max_steps=8", "--resume=auto", *common))
    assert len(train_losses(straight)) == 8
    assert train_losses(halves) == train_losses(straight)  # floats compared exactly
    assert [r for r in metrics(halves) if "val" in r] == [r for r in metrics(straight) if "val" in r]
    for (k, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    meta = json.load(open(halves / "ckpt_0000008" / "meta.json"))
    assert meta["step"] == 8 and meta["data_position"]["samples"] == 8 * 4
    assert meta["manifest_sha256"] == stage.sha256_file(os.path.join(tiny_data, "manifest.json"))
    assert meta["config"]["model"]["n_layer"] == 2 and meta["git"]


def test_checkpoint_keep_policy_and_fresh_start_refused(tiny_data, tmp_path):
    out = tmp_path / "keep"
    train.main(small_args(tiny_data, out, "--max_steps=7", "--ckpt_interval=1", "--keep_last=2", "--keep_every=3"))
    assert sorted(os.listdir(out)) == ["LOCK", "ckpt_0000003", "ckpt_0000006", "ckpt_0000007", "metrics.jsonl"]
    with pytest.raises(ConfigError, match="already holds checkpoints: pass --resume=auto"):
        train.main(small_args(tiny_data, out, "--max_steps=7", "--resume="))


def test_resume_refuses_other_data_or_model(tiny_data, tmp_path):
    out = tmp_path / "run"
    train.main(small_args(tiny_data, out, "--max_steps=2"))
    with pytest.raises(ConfigError, match="holds a different model: d_model=32 there, 48 here"):
        train.main(small_args(tiny_data, out, "--max_steps=4", "--d_model=48"))
    other = tmp_path / "other_data"
    tokenize_tiny(str(other), 512, 0.10)
    with pytest.raises(stage.DataError, match=f"{other}/manifest.json has sha256 .* but .*ckpt_0000002 was trained on"):
        train.main(small_args(str(other), out, "--max_steps=4"))


KILL_DURING_SAVE = """
import sys, time, torch
sys.path.insert(0, {root!r})
import train
real_save, models = torch.save, []
def save(obj, path, *a, **k):
    real_save(obj, path, *a, **k)
    if str(path).endswith("rng_0.pt"):
        models.append(path)
        if len(models) == 2:  # the second checkpoint: begun, its shards not yet written
            print("SAVING", flush=True)
            time.sleep(600)
torch.save = save
train.main(sys.argv[1:])
"""


def test_sigkill_during_save_leaves_previous_checkpoint(tiny_data, tmp_path, capsys):
    script = tmp_path / "victim.py"
    script.write_text(KILL_DURING_SAVE.format(root=ROOT))
    out = tmp_path / "run"
    args = small_args(tiny_data, out, "--max_steps=6", "--ckpt_interval=2", "--schedule_steps=6")
    p = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if line.strip() == "SAVING":
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL
    assert os.path.exists(out / ".tmp_ckpt_0000004" / "rng_0.pt")  # the half-written one
    assert checkpoint.Checkpointer.newest(str(out)) == str(out / "ckpt_0000002")
    train.main(args)  # --resume=auto is the default
    assert f"resuming from {out / 'ckpt_0000002'} at step 2" in capsys.readouterr().out
    straight = tmp_path / "straight"
    train.main(small_args(tiny_data, straight, "--max_steps=6", "--ckpt_interval=2", "--schedule_steps=6"))
    assert train_losses(out) == train_losses(straight)
    assert sorted(d for d in os.listdir(out) if "ckpt" in d) == ["ckpt_0000004", "ckpt_0000006"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_a_checkpoint(tiny_data, tmp_path, sig):
    out = tmp_path / "run"
    args = small_args(tiny_data, out, "--max_steps=400", "--ckpt_interval=1000", "--eval_interval=1000")
    p = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        if line.startswith("step      3/"):
            p.send_signal(sig)
            break
    rest = p.stdout.read()
    assert p.wait(timeout=60) == 130, rest
    ckpt = checkpoint.Checkpointer.newest(str(out))
    assert ckpt is not None and "--resume=auto continues" in rest
    step = json.load(open(os.path.join(ckpt, "meta.json")))["step"]
    assert 3 <= step < 400
    assert max(s for s, _ in train_losses(out)) == step


def test_gradient_accumulation_matches_one_big_batch(tiny_data, tmp_path):
    train.main(small_args(tiny_data, tmp_path / "big", "--max_steps=3", "--batch_size=8", "--global_batch_size=8"))
    train.main(small_args(tiny_data, tmp_path / "acc", "--max_steps=3", "--batch_size=2", "--global_batch_size=8"))
    big, acc = [[r for r in metrics(tmp_path / d) if "loss" in r] for d in ("big", "acc")]
    assert len(big) == len(acc) == 3
    for a, b in zip(big, acc):  # same loss, and the same gradient norm before each step, up to summation order
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    with pytest.raises(ConfigError, match="global_batch_size=10 is not a multiple of batch_size=4"):
        train.main(small_args(tiny_data, tmp_path / "bad", "--global_batch_size=10"))


def test_checkpoints_that_kept_run_settings_with_the_model_still_load():
    # older checkpoints wrote attn_impl and loss_chunk into meta.json's model config
    from config import config_from_dict
    from dataclasses import asdict
    from config import ModelConfig
    old = dict(train=asdict(TrainConfig(out_dir="x")), model={**asdict(ModelConfig(n_layer=3)), "attn_impl": "sdpa",
                                                                "loss_chunk": 512})
    for key in ("attn_impl", "loss_chunk"):
        del old["train"][key]
    cfg, mcfg = config_from_dict(old)
    assert (cfg.attn_impl, cfg.loss_chunk, cfg.out_dir, mcfg.n_layer) == ("sdpa", 512, "x", 3)
    assert not hasattr(mcfg, "attn_impl")
