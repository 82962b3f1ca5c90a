"""nanokernels/flash_attention.py against a float64 softmax(QK^T)V, in the Triton CPU interpreter
(conftest sets TRITON_INTERPRET=1 without a GPU) and, with -m gpu, in bf16 on CUDA."""
import json, math, os, subprocess, sys

import pytest
import torch

import model as model_py
import parallel
import train
from config import ConfigError, TrainConfig
from helpers import ROOT, small_args

fa = pytest.importorskip("nanokernels.flash_attention", reason="needs triton")
flash_attn = fa.flash_attn


def reference(q, k, v, causal, scale, doc_ids=None):
    """float64 attention, written the long way: explicit mask, softmax, GQA by repeating k and v."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    g = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    T = q.size(2)
    visible = torch.ones(T, T, dtype=torch.bool, device=q.device)
    if causal:
        visible = visible.tril()
    visible = visible.expand(q.size(0), 1, T, T)
    if doc_ids is not None:
        visible = visible & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(~visible, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def random_docs(B, T, gen, device="cpu"):
    # sorted ids: packed documents of random lengths, some of a single token
    return torch.sort(torch.randint(0, max(1, T // 8), (B, T), generator=gen), 1).values.to(device)


def run(B, T, Hq, Hkv, D, causal, doc, dtype, seed, device="cpu", scale=None):
    """Output and gradients of flash_attn and of the float64 reference on fresh random inputs."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, T, h, D, generator=gen).to(device, dtype).requires_grad_() for h in (Hq, Hkv, Hkv))
    doc_ids = random_docs(B, T, gen, device) if doc else None
    do = torch.randn(B, T, Hq, D, generator=gen).to(device, dtype)
    scale = scale or 1 / math.sqrt(D)
    out = flash_attn(q, k, v, causal=causal, softmax_scale=scale, doc_ids=doc_ids)
    grads = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference(q64, k64, v64, causal, scale, doc_ids)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    return (out, *grads), (ref, *ref_grads), (q, k, v, do, doc_ids, scale)


def max_err(got, ref):
    # relative to the reference's scale (at least 1: gradients of a 1-token attention are ~0)
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp(min=1.0)).item()


# every head dim x every length once; the other factors (causal, document masking, GQA ratio
# 1/2/4/8) cycle so that each of their 16 combinations appears too
DIMS, LENGTHS, RATIOS = (64, 96, 128, 192, 256), (1, 17, 64, 130, 257), (1, 2, 4, 8)
CASES = [(D, T, bool(i & 1), bool(i & 2), RATIOS[(i >> 2) % 4])
         for i, (D, T) in enumerate((D, T) for D in DIMS for T in LENGTHS)]


@pytest.mark.parametrize("D,T,causal,doc,ratio", CASES)
def test_matches_float64_in_the_interpreter(D, T, causal, doc, ratio):
    got, ref, _ = run(1, T, ratio, 1, D, causal, doc, torch.float32, seed=D * 1000 + T)
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        assert max_err(g, r) < 1e-5, (name, max_err(g, r))


@pytest.mark.parametrize("D,causal,doc", [(64, True, True), (128, False, True), (192, True, False)])
def test_gpu_block_sizes_in_the_interpreter(D, causal, doc, monkeypatch):
    # the tile shapes the GPU runs (128 x 64 and so on), over a length that is not a multiple of them
    gpu_sizes = fa.block_sizes
    monkeypatch.setattr(fa, "block_sizes", lambda D: gpu_sizes(D, interpret=False))
    got, ref, _ = run(1, 300, 2, 1, D, causal, doc, torch.float32, seed=D)
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        assert max_err(g, r) < 1e-5, (name, max_err(g, r))


def test_every_case_combination_is_covered():
    assert {(c, d, r) for _, _, c, d, r in CASES} == {(c, d, r) for c in (True, False) for d in (True, False)
                                                      for r in RATIOS}


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_in_the_interpreter(dtype, tol):
    # bf16 runs with fp32 dots in the interpreter (its bf16 tl.dot is broken); -m gpu checks the real one
    got, ref, _ = run(2, 130, 4, 2, 64, True, True, dtype, seed=7)
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        assert g.dtype == dtype and max_err(g, r) < tol, (name, max_err(g, r))


def test_mup_scale_several_kv_heads_and_batch():
    # CrystalCoder's muP scales scores by 1/D; two kv heads of two queries each, B = 2
    got, ref, _ = run(2, 40, 4, 2, 64, True, False, torch.float32, seed=11, scale=1 / 64)
    for g, r in zip(got, ref):
        assert max_err(g, r) < 1e-5


def test_backward_is_bitwise_deterministic():
    got, _, (q, k, v, do, doc_ids, scale) = run(1, 130, 4, 1, 64, True, True, torch.float32, seed=5)
    again = torch.autograd.grad(flash_attn(q, k, v, True, scale, doc_ids), (q, k, v), do)
    for a, b in zip(got[1:], again):
        assert torch.equal(a, b)


def test_strided_inputs_from_a_fused_projection():
    # the model's q, k, v are views of one (B, T, (Hq + 2 Hkv) D) tensor: row strides larger than H * D
    gen = torch.Generator().manual_seed(2)
    B, T, Hq, Hkv, D = 2, 33, 4, 2, 64
    qkv = torch.randn(B, T, (Hq + 2 * Hkv) * D, generator=gen, requires_grad=True)
    q, k, v = qkv.split([Hq * D, Hkv * D, Hkv * D], -1)
    q, k, v = q.view(B, T, Hq, D), k.view(B, T, Hkv, D), v.view(B, T, Hkv, D)
    out = flash_attn(q, k, v)
    out.square().sum().backward()
    q64 = qkv.detach().double().requires_grad_()
    a, b, c = q64.split([Hq * D, Hkv * D, Hkv * D], -1)
    ref = reference(a.view(B, T, Hq, D), b.view(B, T, Hkv, D), c.view(B, T, Hkv, D), True, D ** -0.5)
    ref.square().sum().backward()
    assert max_err(out, ref) < 1e-5 and max_err(qkv.grad, q64.grad) < 1e-5


def test_doc_segments_hand_worked():
    ids = torch.tensor([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
    start, end = fa.doc_segments(ids)
    assert start.tolist() == [[0, 0, 2, 2, 2, 5], [0, 0, 0, 0, 0, 0]]
    assert end.tolist() == [[2, 2, 5, 5, 5, 6], [6, 6, 6, 6, 6, 6]]


def test_document_masking_equals_separate_sequences():
    # two documents packed in one row attend exactly as if each were alone
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 50, 2, 64, generator=gen) for _ in range(3))
    docs = torch.tensor([[0] * 20 + [1] * 30])
    packed = flash_attn(q, k, v, doc_ids=docs)
    first, second = flash_attn(q[:, :20], k[:, :20], v[:, :20]), flash_attn(q[:, 20:], k[:, 20:], v[:, 20:])
    torch.testing.assert_close(packed, torch.cat([first, second], 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shapes,dtype,match", [
    (((2, 8, 4), (2, 8, 4, 64), (2, 8, 4, 64)), torch.float32, r"\(B, T, H, D\); got q \(2, 8, 4\)"),
    (((2, 8, 4, 64), (2, 8, 3, 64), (2, 8, 3, 64)), torch.float32, r"multiple of Hkv; got q \(2, 8, 4, 64\), k \(2, 8, 3, 64\)"),
    (((2, 8, 4, 64), (2, 9, 4, 64), (2, 9, 4, 64)), torch.float32, r"k \(2, 9, 4, 64\)"),
    (((1, 8, 2, 320), (1, 8, 2, 320), (1, 8, 2, 320)), torch.float32, r"up to 256; got q \(1, 8, 2, 320\)"),
    (((1, 8, 2, 64),) * 3, torch.float64, r"float16, bfloat16 or float32; got torch.float64"),
])
def test_bad_input_is_a_clear_error(shapes, dtype, match):
    q, k, v = (torch.zeros(s, dtype=dtype) for s in shapes)
    with pytest.raises(ValueError, match=match):
        flash_attn(q, k, v)


def test_bad_doc_ids_and_cpu_without_interpreter():
    q = torch.zeros(1, 8, 2, 64)
    with pytest.raises(ValueError, match=r"doc_ids must be \(B, T\) = \(1, 8\); got \(8,\)"):
        flash_attn(q, q, q, doc_ids=torch.zeros(8))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import torch; from nanokernels.flash_attention import flash_attn; q = torch.zeros(1, 8, 2, 64); flash_attn(q, q, q)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "flash_attn needs CUDA tensors (got q on cpu)" in r.stderr


def test_kernels_compile_for_h100():
    """Every kernel (flash attention and AdamW) at the GPU block sizes compiles for sm_90 (Triton's own ptxas, no GPU needed)
    and fits in shared memory; the interpreter is lenient where the compiler is not."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "benchmarks/kernel_bench.py", "compile", "--dims=64,192", "--quick"], cwd=ROOT,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # flash: 3 kernels x 2 dims x (documents or not); AdamW: 3 dtype sets of the step, 2 of the norm
    assert sum(l.endswith(" ok") for l in r.stdout.splitlines()) == 12 + 5, r.stdout


# ------------------------------------------------------------------------------------------
# the model and the trainer with attn_impl="triton"

@pytest.mark.parametrize("name,docs", [("neo", False), ("gqa", True), ("crystal", True)])
def test_model_triton_equals_sdpa(name, docs):
    from test_model import variant
    losses, grads = [], []
    for impl in ("sdpa", "triton"):
        cfg = variant(name, max_seq_len=64)
        m = parallel.build_model(cfg, "cpu", 0, TrainConfig(attn_impl=impl))
        gen = torch.Generator().manual_seed(1)
        idx = torch.randint(0, cfg.vocab_size, (2, 48), generator=gen)
        doc_ids = random_docs(2, 48, gen) if docs else None
        loss = m(idx, torch.roll(idx, -1, 1), doc_ids=doc_ids)
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert abs(losses[0] - losses[1]) < 1e-5
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_train_with_triton_attention_and_document_masking(tiny_data, tmp_path):
    # the trainer runs the kernels (interpreted here); its losses follow SDPA's step for step
    runs = {}
    for impl in ("sdpa", "triton"):
        out = tmp_path / impl
        train.main(small_args(tiny_data, str(out), "--max_steps=3", "--eval_interval=3", "--ckpt_interval=3",
                              f"--attn_impl={impl}", "--doc_mask=true"))
        runs[impl] = [json.loads(l) for l in open(out / "metrics.jsonl")]
    for a, b in zip(runs["sdpa"], runs["triton"]):
        for key in ("loss", "val"):
            if key in a:
                va, vb = (a[key]["all"], b[key]["all"]) if key == "val" else (a[key], b[key])
                assert abs(va - vb) < 1e-4, (a, b)


def test_triton_on_cpu_without_interpreter_is_a_config_error(tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="attn_impl='triton' runs on CUDA, not cpu"):
        train.main(small_args(tiny_data, str(tmp_path), "--max_steps=1", "--warmup_steps=1", "--attn_impl=triton"))


def test_auto_picks_sdpa_on_cpu():
    assert TrainConfig().attn_impl == "auto"
    q = torch.randn(1, 5, 2, 16)
    torch.testing.assert_close(model_py.attention(q, q, q, 0.25, "auto"), model_py.attention(q, q, q, 0.25, "sdpa"))


# ------------------------------------------------------------------------------------------
# on a GPU: bf16, long sequences, the compiled kernels

@pytest.mark.gpu
@pytest.mark.parametrize("D", DIMS)
@pytest.mark.parametrize("T,causal,doc,ratio", [(1, True, False, 1), (257, True, True, 4), (1000, False, False, 8),
                                                (2048, True, False, 2), (4099, True, True, 1)])
def test_gpu_bf16_matches_float64_as_well_as_sdpa(D, T, causal, doc, ratio):
    got, ref, (q, k, v, do, doc_ids, scale) = run(2, T, 2 * ratio, 2, D, causal, doc, torch.bfloat16, seed=T + D,
                                                  device="cuda")
    # torch's own bf16 attention is the yardstick for the rounding error bf16 allows
    qs, ks, vs = (t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v))
    mask = None
    if doc:
        mask = (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
        mask = mask & torch.ones(T, T, dtype=torch.bool, device="cuda").tril() if causal else mask
    sd = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, is_causal=causal and not doc,
                                                          scale=scale, enable_gqa=True)
    sd_grads = torch.autograd.grad(sd, (qs, ks, vs), do.transpose(1, 2))
    theirs = (sd.transpose(1, 2), *(g.transpose(1, 2) for g in sd_grads))
    for name, g, s, r in zip(("out", "dq", "dk", "dv"), got, theirs, ref):
        assert max_err(g, r) <= 2 * max_err(s, r) + 1e-3, (name, max_err(g, r), max_err(s, r))


@pytest.mark.gpu
def test_gpu_backward_is_bitwise_deterministic():
    got, _, (q, k, v, do, doc_ids, scale) = run(2, 4096, 16, 4, 128, True, True, torch.bfloat16, seed=1, device="cuda")
    for _ in range(3):
        again = torch.autograd.grad(flash_attn(q, k, v, True, scale, doc_ids), (q, k, v), do)
        assert all(torch.equal(a, b) for a, b in zip(got[1:], again))


@pytest.mark.gpu
def test_gpu_model_triton_equals_sdpa_under_autocast():
    cfg = model_py.ModelConfig(vocab_size=512, n_layer=2, d_model=384, n_head=2, head_dim=192, ffn_hidden=512,
                               max_seq_len=1024)
    losses = []
    for impl in ("sdpa", "triton"):
        m = parallel.build_model(cfg, "cuda", 0, TrainConfig(attn_impl=impl))
        idx = torch.randint(0, 512, (2, 1024), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses.append(m(idx, torch.roll(idx, -1, 1)).item())
    assert abs(losses[0] - losses[1]) < 2e-2, losses


def test_gpu_check_in_its_cpu_mode(tmp_path):
    # benchmarks/gpu_check.py, as on a GPU but with tiny shapes under the interpreter: every part
    # runs, each writes its raw rows, and one table gathers them; at most 8 files, none large
    pytest.importorskip("transformers")
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device=cpu", f"--out={tmp_path}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    files = os.listdir(tmp_path)
    assert len(files) <= 8 and all(os.path.getsize(tmp_path / f) < 16 * 2**20 for f in files), files
    report = open(tmp_path / "gpu_check.md").read()
    assert report in r.stdout  # the table is printed too, and where it went
    assert f"gpu_check: writing {tmp_path}\n" in r.stdout and f"wrote {tmp_path / 'gpu_check.md'}" in r.stdout
    for part in ("pytest -m gpu", "flash attention", "adamw", "train toy", "toy layers", "chunked loss"):
        assert f"| {part} | ok |" in report, (part, report)
    raw = lambda kind: json.load(open(tmp_path / next(f for f in files if f.startswith(kind))))["rows"]
    train_rows = raw("train_step_toy")
    assert [row["variant"] for row in train_rows] == ["all on", "transformers peer", "sdpa attention"]
    assert all(row["tok_per_s"] > 0 and row["fwd_ms"] > 0 and row["bwd_ms"] > 0 for row in train_rows)
    assert {row["impl"] for row in raw("flash_attention")} >= {"triton", "sdpa-flash"}
    assert {row["impl"] for row in raw("adamw")} == {"triton", "torch-fused", "torch-foreach"}
    # the extrapolation's arithmetic, by hand from the two depths measured
    one, two, full = raw("layers_toy")
    fb = lambda row: row["fwd_ms"] + row["bwd_ms"]
    assert full["per_layer_ms"] == pytest.approx(fb(two) - fb(one))
    assert full["rest_ms"] == pytest.approx(fb(one) - full["per_layer_ms"])
    opt = (one["opt_ms"] + (two["opt_ms"] - one["opt_ms"]) * (2 - 1)) / 8
    assert full["step_ms"] == pytest.approx(full["rest_ms"] + 2 * full["per_layer_ms"] + opt)
    assert full["tok_per_s"] == pytest.approx(one["tokens_per_step"] / full["step_ms"] * 1000)


def gpu_check_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "benchmarks", "gpu_check.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_gpu_check_parts_are_time_boxed(tmp_path):
    import time
    bench = gpu_check_module()
    log, marker = str(tmp_path / "log"), tmp_path / "child_still_running"
    # a part that hangs, with a child of its own (as compile workers are): both stopped at the limit
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w')"
    hang = [sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); "
            "print('started', flush=True); time.sleep(60)"]
    t0 = time.time()
    status, took = bench.run_part(hang, 1, log)
    assert status == "stopped at its 1 s limit" and time.time() - t0 < 10
    time.sleep(3)
    assert not marker.exists()
    assert "started" in open(log).read()
    assert bench.run_part([sys.executable, "-c", "raise SystemExit(3)"], 10, log)[0] == "failed (exit 3)"


def test_gpu_check_writes_a_cpu_self_check_under_out(monkeypatch):
    # a CPU self-check is no figure to commit: by default it goes to out/ (ignored by git), not
    # into the working tree; a GPU's run goes to benchmarks/, where its figures are committed
    import datetime
    bench, ran = gpu_check_module(), []
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # what --device=cpu sets, undone after the test
    monkeypatch.setattr(bench, "gpu_check", lambda device, out, budget: ran.append((device, out)) or 0)
    today = datetime.date.today().isoformat()
    assert bench.main(["--device=cpu"]) == 0
    monkeypatch.setattr(bench.harness, "use_device", lambda device, what: None)  # as if on a GPU
    assert bench.main([]) == 0
    cpu, gpu = os.path.join("out", f"gpu_check_cpu_{today}"), os.path.join("benchmarks", f"gpu_check_{today}")
    assert ran == [("cpu", os.path.join(ROOT, cpu)), ("cuda", os.path.join(ROOT, gpu))]
    if os.path.isdir(os.path.join(ROOT, ".git")):  # a checkout: git status stays clean after a CPU check
        ignored = lambda path: subprocess.run(["git", "check-ignore", "-q", os.path.join(path, "gpu_check.md")],
                                              cwd=ROOT).returncode == 0
        assert ignored(cpu) and not ignored(gpu)
