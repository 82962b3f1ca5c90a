"""The commands a newcomer types: train.py --help, config errors before torch loads, resume that
says what it does, one error line under torchrun, the W&B logger, and losses that do not depend on
how often a run validates, samples or saves."""
import glob, json, os, subprocess, sys, time
from dataclasses import fields

import pytest

import train
from config import ModelConfig, TrainConfig
from helpers import ROOT, free_port, small_args


def metrics(out_dir):
    return [json.loads(l) for l in open(os.path.join(out_dir, "metrics.jsonl"))]


def run(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


# --------------------------------------------------------------------------------------------
# --help and config errors, before torch loads

def test_help_lists_every_key_with_its_value_and_comment():
    r = run("train.py", "--help")
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    for cls in (ModelConfig, TrainConfig):
        for f in fields(cls):
            assert any(l.startswith(f"  --{f.name}=") for l in lines), f.name
    assert "  --out_dir=out/toy" in lines[lines.index("TrainConfig") + 2]  # the group's heading comes first
    assert any(l.startswith("  --n_kv_head=0") and l.endswith("0: n_head (MHA); fewer for GQA, 1 for MQA")
               for l in lines)
    assert any(l.startswith(" # schedule: linear warmup") for l in lines)
    # a config file and flags: their values
    r = run("train.py", "config/neo7b.py", "--lr=1e-05", "--help")
    assert "Every key, with its value from config/neo7b.py and your flags:" in r.stdout
    values = {l.split()[0] for l in r.stdout.splitlines() if l.startswith("  --")}
    assert "--d_model=3072" in values and "--lr=1e-05" in values


def test_a_config_error_comes_before_torch_loads():
    t0 = time.time()
    r = run("-X", "importtime", "train.py", "--n_layers=3")
    t_error = time.time() - t0
    t0 = time.time()
    assert run("-c", "import torch").returncode == 0
    t_torch = time.time() - t0
    assert r.returncode == 2
    errors = [l for l in r.stderr.splitlines() if not l.startswith("import time:")]
    assert errors == ["error: --n_layers=3: unknown key 'n_layers' "
                      "(did you mean 'n_layer'? `python train.py --help` lists every key)"]
    imported = {l.split("|")[-1].strip() for l in r.stderr.splitlines() if l.startswith("import time:")}
    assert "config" in imported and "torch" not in imported and "numpy" not in imported
    assert t_error < t_torch, (t_error, t_torch)
    # the command the message names works
    assert run("train.py", "--help").returncode == 0


def test_a_config_error_under_torchrun_is_said_once():
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                        f"--master_port={free_port()}", "train.py", "--n_layers=3"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    said = "error: --n_layers=3: unknown key 'n_layers'"
    # one line from rank 0, and torchrun's summary names it as the root cause (not "<N/A>")
    assert [l for l in out.splitlines() if l.startswith(said)] != []
    assert len([l for l in out.splitlines() if said in l and not l.strip().startswith("traceback")]) == 1
    assert f"traceback : {said}" in out and "rank 1:" not in out


def test_a_config_path_is_shown_relative():
    r = run("train.py", "--n_head=6", "--n_kv_head=4")
    assert r.stderr.startswith("error: config/toy.py with --n_head=6 --n_kv_head=4: n_head=6 must be"), r.stderr


# --------------------------------------------------------------------------------------------
# resume that says what it does

def test_a_finished_run_says_so_and_trains_nothing(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(small_args(tiny_data, out, "--max_steps=4", "--ckpt_interval=2"))
    before = open(out / "metrics.jsonl").read()
    capsys.readouterr()
    assert train.main(small_args(tiny_data, out, "--max_steps=4", "--ckpt_interval=2")) is None
    said = capsys.readouterr()
    assert said.out + said.err == f"{out}/ckpt_0000004 is at max_steps: nothing to train (raise --max_steps to continue)\n"
    train.main(small_args(tiny_data, out, "--max_steps=2"))  # the README's old Triton example did this
    said = capsys.readouterr()
    assert said.out + said.err == (f"{out}/ckpt_0000004 is at step 4, past max_steps=2: nothing to train "
                                   "(raise --max_steps above 4 to continue it, or give another --out_dir)\n")
    assert open(out / "metrics.jsonl").read() == before and sorted(os.listdir(out)).count("ckpt_0000004") == 1


def test_a_resume_that_moves_the_schedule_is_warned(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    train.main(small_args(tiny_data, out, "--max_steps=4", "--ckpt_interval=4"))
    capsys.readouterr()
    train.main(small_args(tiny_data, out, "--max_steps=8", "--ckpt_interval=4"))
    said = capsys.readouterr().out
    cfg, _ = train.parse(small_args(tiny_data, out, "--max_steps=8"))
    old, _ = train.parse(small_args(tiny_data, out, "--max_steps=4"))
    assert (f"warning: max_steps 4 -> 8 moves the learning-rate schedule of the run resumed: its horizon 4 "
            f"becomes 8, and step 5 trains at lr {train.lr_at(4, cfg):.2e} where the schedule had "
            f"{train.lr_at(4, old):.2e} (--schedule_steps=4 keeps the old horizon)") in said
    # what it said is what it did: step 5 trained at the new schedule's rate
    assert [r["lr"] for r in metrics(out) if r.get("step") == 5 and "lr" in r] == [pytest.approx(train.lr_at(4, cfg))]
    # keeping the horizon: no warning, and the rate of every step goes on from the old schedule
    train.main(small_args(tiny_data, out, "--max_steps=10", "--schedule_steps=8", "--ckpt_interval=4"))
    assert "warning" not in capsys.readouterr().out


def test_a_mixture_phase_past_max_steps_is_named(tiny_data, tmp_path, capsys):
    mix = "--mixture=[(0, {'en': 1, 'zh': 1, 'code': 1}), (100, {'code': 1})]"
    train.main(small_args(tiny_data, tmp_path / "run", "--max_steps=2", mix))
    assert ("note: mixture phase 1 ({'code': 1}) starts at step 100, after max_steps=2: "
            "this run never reaches it") in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# the same losses whatever the run validates, samples or saves

def test_validation_sampling_and_saving_leave_the_losses_bitwise_alone(tiny_data, tmp_path):
    quiet = small_args(tiny_data, tmp_path / "quiet", "--max_steps=9", "--eval_interval=100", "--ckpt_interval=100")
    busy = small_args(tiny_data, tmp_path / "busy", "--max_steps=9", "--eval_interval=2", "--ckpt_interval=3",
                      "--keep_last=5", "--sample_tokens=4")
    train.main(quiet)
    train.main(busy)
    losses = [[(r["step"], r["loss"], r["grad_norm"]) for r in metrics(tmp_path / d) if "loss" in r]
              for d in ("quiet", "busy")]
    assert len(losses[0]) == 9 and losses[0] == losses[1]  # floats compared exactly
    assert len([r for r in metrics(tmp_path / "busy") if "val" in r]) == 6  # 0, 2, 4, 6, 8, 9


# --------------------------------------------------------------------------------------------
# W&B, behind a key

def test_wandb_is_off_by_default_and_never_imported(tiny_data, tmp_path):
    sys.modules.pop("wandb", None)
    train.main(small_args(tiny_data, tmp_path / "run", "--max_steps=1"))
    assert "wandb" not in sys.modules and not os.path.exists(tmp_path / "run" / "wandb")


def test_wandb_gets_every_row_and_a_resume_goes_on_in_the_same_run(tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="pip install wandb (.ci/run installs it)")
    monkeypatch.setenv("WANDB_MODE", "offline")  # the real library, writing its own files, no account
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train.main(small_args(tiny_data, out, "--max_steps=2", "--wandb_project=nano360-test"))
    train.main(small_args(tiny_data, out, "--max_steps=4", "--schedule_steps=2", "--wandb_project=nano360-test"))
    runs = sorted(glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb")))
    run_id = open(out / "wandb_id").read()
    assert len(runs) == 2 and all(r.endswith(f"run-{run_id}.wandb") for r in runs)
    logged = b"".join(open(r, "rb").read() for r in runs)
    assert b"nano360-test" in logged and b"val/en" in logged and b"grad_norm" in logged
    for row in metrics(out):  # every number of metrics.jsonl, as W&B stores it (JSON text)
        for v in ([row["loss"], row["lr"]] if "loss" in row else list(row["val"].values())):
            assert json.dumps(v).encode() in logged, (row, v)
