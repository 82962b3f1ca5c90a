"""Many ranks on a CPU: torchrun with 2 processes, gloo, FSDP2 and torch.distributed.checkpoint
(all of them work on a CPU). The runs are the shrunken toy of helpers.small_args."""
import json, math, os, signal, subprocess, sys

import pytest
import torch

import checkpoint
import data
import stage
import tokenizer
import parallel
import train
from config import load_config
from helpers import ROOT, free_port, small_args
from model import GPT


def torchrun(nproc, args, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           "train.py", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


def run(nproc, data_dir, out, *overrides):
    """A run of 8 sequences per step on 1 rank (2 micro-batches of 4) or 2 ranks (1 each)."""
    args = small_args(data_dir, str(out), "--global_batch_size=8", "--schedule_steps=6", "--ckpt_interval=2",
                      "--eval_interval=3", "--keep_last=10", *overrides)
    if nproc == 1:
        train.main(args)
    else:
        r = torchrun(nproc, args)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def losses(out):
    """Training losses in step order, and validation losses by step."""
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    return [r["loss"] for r in rows if "loss" in r], {r["step"]: r["val"]["all"] for r in rows if "val" in r}


def close(a, b, tol=1e-5):
    if isinstance(a, dict):  # validation: a run that stopped and resumed has evaluated at its stop too
        return set(a) <= set(b) and close([a[k] for k in sorted(a)], [b[k] for k in sorted(a)], tol)
    return len(a) == len(b) and all(abs(x - y) <= tol * abs(y) for x, y in zip(a, b))


@pytest.mark.parametrize("gb", [8, 16])
def test_two_ranks_follow_one_rank(tiny_data, tmp_path, gb):
    # the same global batch split over 2 ranks (1 or 2 micro-batches each): the same trajectory up
    # to the order of reductions, from the same initial weights (each rank draws the whole tensor
    # and keeps its shard)
    run(1, tiny_data, tmp_path / "one", "--max_steps=6", f"--global_batch_size={gb}")
    run(2, tiny_data, tmp_path / "two", "--max_steps=6", f"--global_batch_size={gb}")
    (l1, v1), (l2, v2) = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(l1) == 6 and close(l1, l2) and close(v1, v2), (l1, l2, v1, v2)


@pytest.mark.parametrize("first,second", [(2, 1), (1, 2)])
def test_resume_at_another_world_size(tiny_data, tmp_path, first, second):
    run(1, tiny_data, tmp_path / "straight", "--max_steps=6")
    run(first, tiny_data, tmp_path / "split", "--max_steps=4")
    run(second, tiny_data, tmp_path / "split", "--max_steps=6")  # --resume=auto, from ckpt_0000004
    (a, va), (b, vb) = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert close(a, b) and close(va, vb), (a, b)
    meta = json.load(open(tmp_path / "split" / "ckpt_0000006" / "meta.json"))
    assert meta["world_size"] == second and meta["data_position"]["samples"] == 48


@pytest.mark.parametrize("first,second", [(1, 2), (2, 1)])
def test_resume_at_another_world_size_with_the_defaults(tiny_data, tmp_path, capsys, first, second):
    # global_batch_size is not set, so a fresh run's global batch follows its world size (4 a rank);
    # a resume on another number of ranks keeps the checkpoint's, says so, and follows the run that
    # never stopped
    common = ["--schedule_steps=6", "--ckpt_interval=2", "--eval_interval=3", "--keep_last=10"]
    split, straight = tmp_path / "split", tmp_path / "straight"
    train.main(small_args(tiny_data, str(straight), *common, "--max_steps=6", f"--global_batch_size={4 * first}"))

    def go(nproc, steps):
        args = small_args(tiny_data, str(split), *common, f"--max_steps={steps}")
        if nproc == 1:
            capsys.readouterr()
            train.main(args)
            return capsys.readouterr().out
        r = torchrun(nproc, args)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout
    go(first, 4)
    said, micro = go(second, 6), math.gcd(4 * first // second, 4)  # the share of a rank, in batch_size parts
    assert (f"resuming with the global batch of {split / 'ckpt_0000004'}: {4 * first} sequences per step "
            f"(not {4 * second}: global_batch_size is not set), micro-batches of {micro} per rank") in said
    (a, va), (b, vb) = losses(straight), losses(split)
    assert close(a, b) and close(va, vb), (a, b)
    meta = json.load(open(split / "ckpt_0000006" / "meta.json"))
    assert (meta["world_size"], meta["data_position"]["global_batch"]) == (second, 4 * first)


def test_two_ranks_share_the_checksums_and_fall_back_together(tiny_data, tmp_path):
    # ckpt_4's first shard is hashed by rank 1 (files sorted, dealt round-robin): both ranks must
    # skip ckpt_4 and resume from ckpt_2, and the run must follow the straight one
    straight, split = tmp_path / "straight", tmp_path / "split"
    run(2, tiny_data, straight, "--max_steps=6")
    run(2, tiny_data, split, "--max_steps=4")
    shard = split / "ckpt_0000004" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    r = torchrun(2, small_args(tiny_data, str(split), "--global_batch_size=8", "--schedule_steps=6", "--ckpt_interval=2",
                               "--eval_interval=3", "--keep_last=10", "--max_steps=6"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"ckpt_0000004 is damaged ({shard}: sha256 differs" in r.stdout and "ckpt_0000002" in r.stdout
    assert (split / "superseded" / "ckpt_0000004").is_dir()
    (a, va), (b, vb) = losses(straight), losses(split)
    assert close(a, b) and close(va, vb), (a, b)


def test_a_killed_rank_stops_the_job_and_resume_loses_nothing(tiny_data, tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    run(2, tiny_data, straight, "--max_steps=6")
    args = small_args(tiny_data, str(crashed), "--global_batch_size=8", "--schedule_steps=6", "--ckpt_interval=2",
                      "--eval_interval=3", "--keep_last=10", "--max_steps=6", "--dist_timeout=60")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "train.py", *args]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    out = []
    for line in p.stdout:
        out.append(line)
        if line.startswith("step      3/"):  # after the checkpoint of step 2: SIGKILL one worker
            workers = subprocess.run(["pgrep", "-f", "train.py", "-P", str(p.pid)], capture_output=True, text=True)
            os.kill(int(workers.stdout.split()[-1]), signal.SIGKILL)
            break
    out.append(p.stdout.read())
    assert p.wait(timeout=120) != 0
    log = "".join(out)
    assert "ChildFailedError" in log and "Signal 9 (SIGKILL)" in log, log[-2000:]
    assert checkpoint.Checkpointer.newest(str(crashed)).endswith("ckpt_0000002")
    run(2, tiny_data, crashed, "--max_steps=6")  # the restart: --resume=auto
    (a, va), (b, vb) = losses(straight), losses(crashed)
    assert close(a, b) and close(va, vb), (a, b)


def test_checkpoint_contents_and_consolidated_file(tiny_data, tmp_path):
    out = tmp_path / "run"
    run(2, tiny_data, out, "--max_steps=2")
    ckpt = out / "ckpt_0000002"
    names = set(os.listdir(ckpt))
    assert {"DONE", "meta.json", ".metadata", "rng_0.pt", "rng_1.pt", "__0_0.distcp", "__1_0.distcp"} <= names
    with open(ckpt / ".metadata", "rb") as f:
        entries = checkpoint.SafeUnpickler(f).load().state_dict_metadata
    assert "model.embed.weight" in entries and "optim.state.blocks.0.attn.qkv.weight.exp_avg_sq" in entries
    # tensors only: nothing DCP would pickle (the optimizer's param_groups come from the config)
    assert {type(e).__name__ for e in entries.values()} == {"TensorStorageMetadata"}
    meta = json.load(open(ckpt / "meta.json"))
    assert {"step", "config", "git", "manifest_sha256", "data_position", "world_size", "files"} <= set(meta)
    assert sorted(meta["files"]) == sorted(names - {"DONE", "meta.json"})  # both ranks' files, summed
    assert all(meta["files"][n]["sha256"] == stage.sha256_file(ckpt / n) for n in meta["files"])
    assert json.load(open(ckpt / "DONE")) == {"meta.json": stage.sha256_file(ckpt / "meta.json")}
    # the consolidated single file: a plain state dict that a fresh model loads
    r = subprocess.run([sys.executable, "train.py", "--consolidate", str(ckpt), str(tmp_path / "full.pt")], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cfg, mcfg = load_config(small_args(tiny_data, str(out)))
    mcfg.vocab_size = meta["config"]["model"]["vocab_size"]
    fresh = parallel.build_model(mcfg, "cpu", seed=123)
    fresh.load_state_dict(torch.load(tmp_path / "full.pt", weights_only=True))
    resumed = parallel.build_model(mcfg, "cpu", seed=456)
    opt = torch.optim.AdamW(resumed.param_groups(0.1, False))
    checkpoint.Checkpointer(str(out)).load(str(ckpt), resumed, opt)
    idx = torch.randint(0, mcfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.equal(fresh(idx), resumed(idx))
    assert opt.state_dict()["state"][0]["step"].item() == 2


MEMORY = """
import json, os, sys
sys.path.insert(0, {root!r})
import parallel, torch
from config import load_config
from model import GPT
cfg, mcfg = load_config(sys.argv[1:])
rank, ws, device, mesh = parallel.setup_distributed(cfg)
mcfg.vocab_size = 512
model = parallel.build_model(mcfg, device, 0, cfg, mesh)
opt = torch.optim.AdamW(model.parameters())
for p in model.parameters():
    p.grad = torch.zeros_like(p)
opt.step()
local = lambda t: t.to_local() if hasattr(t, "to_local") else t
measured = dict(params=sum(local(p).numel() * 4 for p in model.parameters()),
                state=sum(local(t).numel() * 4 for s in opt.state.values() for k, t in s.items() if k != "step"))
with torch.device("meta"):
    plan = GPT(mcfg).estimate_memory(cfg.batch_size * cfg.seq_len, ws)
if rank == 0:
    json.dump(dict(measured=measured, plan=plan), open(os.environ["OUT"], "w"))
torch.distributed.destroy_process_group()
"""


def test_dry_run_memory_plan_matches_the_shards(tiny_data, tmp_path):
    script = tmp_path / "memory.py"
    script.write_text(MEMORY.format(root=ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           str(script), *small_args(tiny_data, str(tmp_path), "--d_model=64", "--ffn_hidden=160")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OUT": str(tmp_path / "memory.json")})
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.load(open(tmp_path / "memory.json"))
    # rank 0 holds the larger half of every unevenly split tensor: within 2% of the plan
    assert abs(m["measured"]["params"] / m["plan"]["params fp32 (shard)"] - 1) < 0.02, m
    assert abs(m["measured"]["state"] / m["plan"]["AdamW m, v fp32 (shard)"] - 1) < 0.02, m


def test_nan_loss_skips_the_step_and_too_many_stop_the_run(tiny_data, tmp_path, monkeypatch):
    forward, calls = GPT.forward, [0]

    def flaky(self, idx, targets=None, **kw):  # training losses 3 and 4 are NaN (validation passes)
        loss = forward(self, idx, targets, **kw)
        if self.training:
            calls[0] += 1
            if calls[0] in (3, 4):
                return loss * float("nan")
        return loss
    monkeypatch.setattr(GPT, "forward", flaky)
    out = tmp_path / "run"
    train.main(small_args(tiny_data, str(out), "--max_steps=6", "--eval_interval=100"))
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if r.get("skipped")] == [3, 4]
    assert [r["step"] for r in rows if "loss" in r and not r.get("skipped")] == [1, 2, 5, 6]
    calls[0] = -100  # from now on every loss is NaN
    monkeypatch.setattr(GPT, "forward", lambda self, idx, targets=None, **kw: forward(self, idx, targets, **kw) * float("nan"))
    with pytest.raises(train.TrainingError, match=r"step 9: 3 steps in a row with a NaN or inf loss"):
        train.main(small_args(tiny_data, str(out), "--max_steps=10", "--eval_interval=100", "--max_bad_steps=3"))


def test_async_checkpoints_resume_exactly(tiny_data, tmp_path):
    run(1, tiny_data, tmp_path / "straight", "--max_steps=6")
    run(1, tiny_data, tmp_path / "async", "--max_steps=4", "--async_ckpt=true")
    assert os.path.exists(tmp_path / "async" / "ckpt_0000004" / "DONE")
    run(1, tiny_data, tmp_path / "async", "--max_steps=6", "--async_ckpt=true")
    (a, va), (b, vb) = losses(tmp_path / "straight"), losses(tmp_path / "async")
    assert a == b and close(va, vb, tol=0.0)  # bit for bit


@pytest.mark.parametrize("options", [("--fsdp=hsdp",), ("--optimizer=adamw_triton",)])
def test_hsdp_and_the_triton_adamw_on_two_ranks(tiny_data, tmp_path, options):
    # hsdp on one node of 2: a (1 replica x 2 shards) mesh; the fused AdamW on DTensor shards
    run(1, tiny_data, tmp_path / "one", "--max_steps=4", *options)
    run(2, tiny_data, tmp_path / "two", "--max_steps=4", *options)
    (l1, v1), (l2, v2) = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert close(l1, l2) and close(v1, v2), (l1, l2)


def matmuls_in_backward(model, idx):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += func.name() == "aten::mm"
            return func(*args, **(kwargs or {}))
    loss = model(idx, torch.roll(idx, -1, 1))
    with Count():
        loss.backward()
    return loss, Count.n


@pytest.mark.parametrize("ac", ["full", "selective", "every:2"])
def test_activation_checkpointing_recomputes_and_changes_nothing(tiny_data, ac):
    cfg, mcfg = load_config(small_args(tiny_data, "unused", "--n_layer=4", f"--ac={ac}"))
    mcfg.vocab_size = 512
    idx = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    plain, wrapped = parallel.build_model(mcfg, "cpu", 0), parallel.build_model(mcfg, "cpu", 0, cfg)
    calls = []
    for i, block in enumerate(wrapped.blocks):
        block.mlp.register_forward_pre_hook(lambda m, a, i=i: calls.append(i))  # recomputation stops early: no post-hook
    (loss, n_plain), (loss_ac, n_ac) = matmuls_in_backward(plain, idx), matmuls_in_backward(wrapped, idx)
    assert torch.equal(loss, loss_ac)
    for (name, p), q in zip(plain.named_parameters(), wrapped.parameters()):
        assert torch.equal(p.grad, q.grad), name
    # which blocks ran their MLP again in the backward, and whether their matmuls were redone
    again = sorted(i for i in set(calls) if calls.count(i) == 2)
    assert again == {"full": [0, 1, 2, 3], "selective": [0, 1, 2, 3], "every:2": [0, 2]}[ac]
    assert (n_ac == n_plain) if ac == "selective" else (n_ac > n_plain), (n_plain, n_ac)


def test_memorization_measures_what_a_fim_two_rank_run_trained_on(tiny_data, tmp_path, capsys):
    # 2 ranks, global_batch_size=0 (so 2 x batch_size a step) and fill-in-the-middle on code:
    # the sequences eval.py prompts with are the ones `data.py show` prints for those steps
    import eval as ev
    out = tmp_path / "run"
    r = torchrun(2, small_args(tiny_data, str(out), "--max_steps=8", "--ckpt_interval=8", "--eval_interval=8",
                               "--fim_rate=0.9"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ckpt = str(out / "ckpt_0000008")
    _, cfg, enc, meta = ev.load(ckpt)
    assert meta["data_position"]["global_batch"] == 8 and cfg.global_batch_size == 0
    steps, seqs = ev.trained_sequences(cfg, meta, n=8)
    assert steps == list(range(8))
    fim = {enc.encode_single_token(t) for t in tokenizer.FIM_TOKENS}
    assert any(fim & set(row.tolist()) for row in seqs)  # FIM is applied in what eval.py reads
    capsys.readouterr()
    for step, row in zip(steps, seqs):
        assert data.main(["show", "--ckpt", ckpt, "--step", str(step)]) == 0
        printed = capsys.readouterr().out.split("\n=== step")[0]  # sequence 0, the first of the batch
        header, text = printed.split("\n", 1)
        assert header.startswith(f"=== step {step} · sequence 0/8 ·")
        assert text == enc.decode(row.tolist())
