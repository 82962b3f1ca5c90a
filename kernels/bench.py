"""
Benchmarks and build checks of the Triton kernels.

    python kernels/bench.py gpu [--out=DIR] [--budget=480]
        the GPU check, everything below in one run of at most 8 minutes on one H100/H200,
        most important first, each part in its own process with its own time limit (one that
        fails or hangs does not eat the rest): pytest -m gpu; flash attention against SDPA
        (D 64, 128, 192, causal, 1k-8k); AdamW against torch's fused; training steps of
        neo_1b and neo_125m (compile on) against transformers' Llama, each optimisation off in
        turn; neo7b's width at 1 and 3 layers, extrapolated to 28 layers on 8 GPUs; the
        chunked loss. Into DIR (default benchmarks/gpu_check_<date>/), at most 8 files:
        gpu_check.md (one table of every figure against its peer and target, the parts'
        status, versions, nvidia-smi; also printed), gpu_check.log (all output) and each
        part's raw JSON. --device=cpu: the same with tiny shapes under the interpreter (the
        test suite runs it). Needs no rustbpe and no data.
    python kernels/bench.py compile [--dims=64,128] [--quick]
        compile every kernel at its GPU block sizes for an H100 (sm_90) with Triton's own
        ptxas: no GPU needed. Prints shared memory, registers and spills per kernel; exits 1
        if one fails to compile or does not fit in shared memory.
    python kernels/bench.py attention [--dims=64,128,192] [--lengths=1024,...] [--write]
        on a GPU: TFLOP/s of forward, backward and forward+backward of flash_attn against
        torch's scaled_dot_product_attention (flash and cuDNN backends), bf16, B*T = 16k
        tokens, H*D = 2048. Raw results go to benchmarks/flash_attention_<date>.json (with
        nvidia-smi and versions); --write appends the table to BENCHMARKS.md.
    python kernels/bench.py adamw [--cases=neo_125m,neo_1b,neo7b/8] [--write]
        on a GPU: ms per step of kernels.adamw.AdamW against torch.optim.AdamW (fused=True
        and foreach=True) on the parameter shapes of a config (neo7b/8: one of 8 FSDP
        shards), effective bandwidth at 28 bytes per parameter, and clip + step.

    python kernels/bench.py train [config/neo_1b.py] [-- --batch_size=4 ...] [--steps=10] [--write]
        on a GPU: a whole training step of a config on random tokens: tokens/s, MFU against the
        measured bf16 matmul peak and against 989 TFLOP/s, peak memory, ms of forward, backward
        and optimizer; each optimisation toggled off in turn (Triton attention, Triton AdamW,
        compile, activation checkpointing as configured vs full), and transformers'
        LlamaForCausalLM of the same shape with fused torch AdamW, bf16 autocast and SDPA.

    python kernels/bench.py layers [config/neo7b.py] [--layers=1,3] [--gpus=8] [-- --key=value ...]
        on a GPU: training steps of the config at two depths: ms per layer, the rest, and the
        full depth's tokens/s per GPU on --gpus GPUs under FSDP, the arithmetic printed.

    python kernels/bench.py loss [--tokens=8192]
        the training loss over a 64k vocabulary: full fp32 logits against model.py's
        ChunkedCrossEntropy (loss_chunk), time and extra peak memory, each in a fresh process.

--device=cpu (with TRITON_INTERPRET=1) runs any of them on a CPU, slowly, to check the harness;
--out=DIR writes the raw JSON elsewhere than benchmarks/.

FLOPs: forward 4*B*H*T^2*D (halved when causal), backward 2.5x forward (dQ, dK, dV and the
recomputed scores), forward+backward 3.5x.
"""
import argparse, datetime, json, math, os, re, subprocess, sys, tempfile

import numpy as np
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SMEM_SM90 = 232448  # bytes of shared memory one block may use on an H100


# ----------------------------------------------------------------------------- compile check

def _build(kernel, const, types, warps, stages):
    """Compile for sm_90: (shared bytes, registers, spilled bytes). types: argument -> Triton type."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig = {a: "constexpr" if a in const else types.get(a, "i32") for a in kernel.arg_names}
    # what a launch specialises on: pointers and strides divisible by 16 (lengths anything)
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(kernel.arg_names)
             if sig[a].startswith("*") or re.fullmatch(r"s[a-z]{2}", a)}
    k = triton.compile(ASTSource(kernel, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=warps, num_stages=stages))
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs, spill = re.search(r"REG:(\d+)", usage), re.search(r"STACK:(\d+)", usage)
    return k.metadata.shared, regs.group(1) if regs else "?", spill.group(1) if spill else "?"


def _compile(job):
    import triton
    import triton.language as tl
    if job[0] == "adamw":
        import kernels.adamw as ad
        _, name, pd, gd, sd = job
        kernel = dict(adamw=ad._adamw_kernel, sumsq=ad._sumsq_kernel)[name]
        const = dict(P_DTYPE=getattr(tl, pd), G_DTYPE=getattr(tl, gd), S_DTYPE=getattr(tl, sd), BLOCK=ad.BLOCK)
        const = {k: v for k, v in const.items() if k in kernel.arg_names}
        types = dict(ADDR="*i64", HYPER="*fp32", CHUNK_TENSOR="*i32", CHUNK_START="*i64", GRAD_SCALE="*fp32",
                     OUT="*fp32")
        row, warps, stages = f"{name:5s} param {pd:8s} grad {gd:8s} state {sd:8s}", 8, 1
    else:
        import kernels.flash_attention as fa
        _, name, D, causal, doc = job
        kernel = dict(fwd=fa._fwd_kernel, dkdv=fa._bwd_dkdv_kernel, dq=fa._bwd_dq_kernel)[name]
        BM, BN, warps, stages = fa.block_sizes(D, interpret=False)[name]
        const = dict(D=D, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_M=BM, BLOCK_N=BN, CAUSAL=causal, DOC=doc,
                     PREC="tf32", UPCAST=False)
        types = {a: "*bf16" for a in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
        types.update(LSE="*fp32", DELTA="*fp32", SEG_LO="*i32", SEG_HI="*i32", qk_scale="fp32", sm_scale="fp32")
        row = f"{name:5s} D={D:<4d} {'causal' if causal else 'full  '} {'docs' if doc else '    '} " \
              f"{BM:>3d}x{BN:<3d} {warps}w {stages}s"
    try:
        shared, regs, spill = _build(kernel, const, types, warps, stages)
    except Exception as e:  # noqa: BLE001 - reported, and the exit status says so
        return False, f"{row}  FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    fits = shared <= SMEM_SM90
    return fits, (f"{row}  smem {shared // 1024:3d} KiB  regs {regs:>3s}  spill {spill:>4s} B  "
                  f"{'ok' if fits else 'TOO MUCH SHARED MEMORY'}")


def compile_check(dims, quick):
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("compile: unset TRITON_INTERPRET (the interpreter compiles nothing)")
    variants = [(True, False), (True, True)] if quick else [(c, d) for c in (True, False) for d in (False, True)]
    jobs = [("flash", name, D, c, d) for D in dims for c, d in variants for name in ("fwd", "dkdv", "dq")]
    jobs += [("adamw", "adamw", "float32", g, s) for g, s in
             [("float32", "float32"), ("bfloat16", "float32"), ("float32", "bfloat16")]]
    jobs += [("adamw", "sumsq", "float32", g, "float32") for g in ("float32", "bfloat16")]
    print(f"compiling {len(jobs)} kernels for sm_90")
    ok = True
    with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as ex:
        for fits, line in ex.map(_compile, jobs):
            print(line, flush=True)
            ok &= fits
    return 0 if ok else 1


# ----------------------------------------------------------------------------- attention speed

def environment(device):
    import torch, triton
    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout if device == "cuda" else ""
    return dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name() if smi else "cpu",
                torch=torch.__version__, triton=triton.__version__, python=sys.version.split()[0], nvidia_smi=smi)


def timed(fn, device, reps=50):
    """Milliseconds per call: triton's do_bench on a GPU (flushes L2, takes the median), a plain clock on a CPU."""
    import time
    if device == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=5, rep=reps)
    fn()
    t = time.perf_counter()
    for _ in range(3):
        fn()
    return (time.perf_counter() - t) / 3 * 1000


def attention_bench(dims, lengths, tokens, width, device, out, write, causals=(True, False)):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from kernels.flash_attention import flash_attn
    env, rows = environment(device), []
    impls = {"triton": lambda q, k, v, causal: flash_attn(q, k, v, causal=causal)}
    for label, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
        def sdpa(q, k, v, causal, backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                      is_causal=causal).transpose(1, 2)
        impls[label] = sdpa
    print(f"{env['device']} | torch {env['torch']} | triton {env['triton']} | bf16, B*T = {tokens}, H*D = {width}")
    print(f"{'impl':11s} {'causal':6s} {'D':>4s} {'T':>6s} {'fwd':>7s} {'bwd':>7s} {'fwd+bwd':>8s}  TFLOP/s  max err vs sdpa")
    for D in dims:
        for causal in causals:
            for T in lengths:
                B, H = max(1, tokens // T), max(1, width // D)
                gen = torch.Generator(device).manual_seed(0)
                q, k, v = (torch.randn(B, T, H, D, device=device, dtype=torch.bfloat16, generator=gen)
                           .requires_grad_() for _ in range(3))
                do = torch.randn_like(q)
                flops = 4 * B * H * T * T * D / (2 if causal else 1)
                ref = impls["sdpa-flash"](q, k, v, causal)
                for name, fn in impls.items():
                    try:
                        o = fn(q, k, v, causal)
                        err = (o - ref).abs().max().item()
                        fwd = timed(lambda: fn(q, k, v, causal), device)
                        bwd = timed(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True), device)
                        both = timed(lambda: torch.autograd.grad(fn(q, k, v, causal), (q, k, v), do), device)
                    except RuntimeError as e:  # a backend that does not take this shape
                        print(f"{name:11s} {str(causal):6s} {D:4d} {T:6d}  unavailable: {str(e).splitlines()[0][:80]}")
                        continue
                    row = dict(impl=name, causal=causal, D=D, T=T, B=B, H=H, fwd_ms=fwd, bwd_ms=bwd, fwd_bwd_ms=both,
                               fwd_tflops=flops / fwd / 1e9, bwd_tflops=2.5 * flops / bwd / 1e9,
                               fwd_bwd_tflops=3.5 * flops / both / 1e9, max_abs_err_vs_sdpa=err)
                    rows.append(row)
                    print(f"{name:11s} {str(causal):6s} {D:4d} {T:6d} {row['fwd_tflops']:7.0f} {row['bwd_tflops']:7.0f} "
                          f"{row['fwd_bwd_tflops']:8.0f}           {err:.1e}", flush=True)
                del q, k, v, do, ref
                save("flash_attention", env, rows, [], out, False, "", quiet=True)
    table = [("impl", "impl"), ("causal", "causal"), ("D", "D"), ("T", "T"), ("fwd", "fwd_tflops"),
             ("bwd", "bwd_tflops"), ("fwd+bwd", "fwd_bwd_tflops")]
    return save("flash_attention", env, rows, table, out, write, f"bf16, B*T = {tokens}, H*D = {width}; TFLOP/s")


def save(kind, env, rows, table, out, write, what, quiet=False):
    """The raw rows (with nvidia-smi and versions) to out/, and with --write a table in BENCHMARKS.md."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{kind}_{env['date']}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(command=" ".join(sys.argv), env=env, rows=rows), f, indent=1, default=str)
    os.replace(path + ".tmp", path)  # a part killed at its time limit leaves the last whole file
    if quiet:
        return 0
    print(f"wrote {path}")
    if write:
        cell = lambda v: f"{v:.3g}" if isinstance(v, float) else "" if v is None else str(v)
        lines = [f"\n## {kind}, {env['device']}, {env['date']}\n",
                 f"`python kernels/bench.py {' '.join(sys.argv[1:])}`; torch {env['torch']}, triton {env['triton']}; "
                 f"{what} (raw: benchmarks/{os.path.basename(path)})\n",
                 "| " + " | ".join(h for h, _ in table) + " |", "|" + "---|" * len(table)]
        lines += ["| " + " | ".join(cell(r.get(k)) for _, k in table) + " |" for r in rows]
        with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as f:
            f.write("\n".join(lines) + "\n")
    return 0


# ----------------------------------------------------------------------------- AdamW speed

def param_shapes(config, shard, vocab=64000, overrides=()):
    """The parameter shapes of a config's model (64k vocabulary), dim 0 split `shard` ways as FSDP does."""
    import torch
    from config import load_config
    from model import GPT
    cfg, mcfg = load_config([os.path.join(ROOT, "config", config + ".py"), *overrides])
    mcfg.vocab_size = vocab
    with torch.device("meta"):
        model = GPT(mcfg)
    return [(-(-p.shape[0] // shard),) + tuple(p.shape[1:]) for p in model.parameters()]


def adamw_bench(cases, device, out, write, vocab=64000, overrides=()):
    import torch
    from kernels.adamw import AdamW
    env, rows = environment(device), []
    make = {"triton": lambda ps: AdamW(ps, lr=1e-4, weight_decay=0.1),
            "torch-fused": lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.1, fused=True),
            "torch-foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.1, foreach=True)}
    print(f"{env['device']} | torch {env['torch']} | triton {env['triton']} | fp32 params, grads and state")
    print(f"{'case':14s} {'params':>14s} {'tensors':>7s} {'impl':14s} {'step ms':>8s} {'GB/s @28B':>9s} {'clip+step ms':>12s}")
    for case in cases:
        config, _, shard = case.partition("/")
        shapes = param_shapes(config, int(shard or 1), vocab, overrides)
        n = sum(math.prod(s) for s in shapes)
        for name, opt_of in make.items():
            gen = torch.Generator(device).manual_seed(0)
            ps = [torch.nn.Parameter(torch.randn(s, device=device, generator=gen)) for s in shapes]
            for p in ps:
                p.grad = torch.randn(p.shape, device=device, generator=gen) * 1e-3
            opt = opt_of(ps)
            opt.step()  # allocates the state
            step_ms = timed(opt.step, device)
            if name == "triton":
                clip = lambda: (opt.clip_grad_norm_(1.0), opt.step())
            else:
                clip = lambda: (torch.nn.utils.clip_grad_norm_(ps, 1.0, foreach=True), opt.step())
            clip_ms = timed(clip, device)
            row = dict(case=case, params=n, tensors=len(shapes), impl=name, step_ms=step_ms, clip_step_ms=clip_ms,
                       gb_per_s=28 * n / step_ms / 1e6)
            rows.append(row)
            print(f"{case:14s} {n:14,d} {len(shapes):7d} {name:14s} {step_ms:8.2f} {row['gb_per_s']:9.0f} {clip_ms:12.2f}",
                  flush=True)
            save("adamw", env, rows, [], out, False, "", quiet=True)
            del ps, opt
            if device == "cuda":
                torch.cuda.empty_cache()
    table = [("case", "case"), ("params", "params"), ("impl", "impl"), ("step ms", "step_ms"),
             ("GB/s at 28 B/param", "gb_per_s"), ("clip + step ms", "clip_step_ms")]
    return save("adamw", env, rows, table, out, write, "fp32 params, grads, state; 64k vocabulary")


# ----------------------------------------------------------------------------- a whole training step

VARIANTS = {  # each optimisation toggled in turn against "all on": the config as given (compile it there)
    "all on": {},
    "sdpa attention": dict(attn_impl="sdpa"),
    "torch fused adamw": dict(optimizer="adamw_torch"),
    "no compile": dict(compile=False),
    "full recompute": dict(ac="full"),
}


def matmul_peak(device):
    """Measured bf16 TFLOP/s of an 8192^3 matmul: the ceiling MFU is also quoted against."""
    import torch
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    return 2 * 8192 ** 3 / timed(lambda: a @ a, device) / 1e9


def step_timer(run, model, optimizer, x, device, clip):
    """One training step as (forward, backward, optimizer) milliseconds."""
    import time
    import torch
    from train import clip_grads
    marks = []

    def mark():
        if device == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
    mark()
    loss = run(x[:, :-1], x[:, 1:])
    loss = loss if torch.is_tensor(loss) else loss.loss
    mark()
    loss.backward()
    mark()
    clip_grads(model, optimizer, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mark()
    return [1000 * (b - a) for a, b in zip(marks, marks[1:])]


def llama_peer(mcfg, device):
    """The model most users would otherwise run: transformers' LlamaForCausalLM of the same shape."""
    import transformers
    cfg = transformers.LlamaConfig(vocab_size=mcfg.vocab_size, hidden_size=mcfg.d_model, intermediate_size=mcfg.ffn_hidden,
                                   num_hidden_layers=mcfg.n_layer, num_attention_heads=mcfg.n_head,
                                   num_key_value_heads=mcfg.n_kv_head, head_dim=mcfg.head_dim, rms_norm_eps=mcfg.norm_eps,
                                   max_position_embeddings=mcfg.max_seq_len, rope_theta=mcfg.rope_theta,
                                   tie_word_embeddings=mcfg.tie_embeddings, attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(cfg).to(device)

    def run(idx, targets):  # transformers shifts the labels itself: the inputs are the labels
        return model(input_ids=idx, labels=idx)
    return model, run


def measure(name, config, overrides, steps, warmup, device, peak):
    """One row: a training step of config (+ overrides) on random tokens, median over steps after
    warmup: tokens/s, MFU against the measured peak and 989 TFLOP/s, forward / backward /
    optimizer ms, peak memory. name: "transformers peer" for LlamaForCausalLM of that shape."""
    import torch
    import data
    import train
    from config import load_config, resolve_vocab
    from model import GPT
    cfg, mcfg = load_config([config, f"--device={device}", *overrides])
    resolve_vocab(mcfg, data.tokenizer_size(cfg))
    autocast = train.autocast_for(cfg, torch.device(device))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, mcfg.vocab_size, (cfg.batch_size, cfg.seq_len + 1), generator=gen).to(device)
    if name == "transformers peer":
        model, run = llama_peer(mcfg, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=device == "cuda")
        with torch.device("meta"):
            flops = GPT(mcfg).estimate_flops(cfg.seq_len)
    else:
        model = train.build_model(mcfg, device, cfg.seed, cfg)
        run, flops = model, model.estimate_flops(cfg.seq_len)
        optimizer = train.make_optimizer(model, cfg, torch.device(device), torch_fused=device == "cuda")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        with autocast:
            t = step_timer(run, model, optimizer, x, device, cfg.grad_clip)
        if i >= warmup:
            times.append(t)
    fwd, bwd, opt = (float(np.median([t[k] for t in times])) for k in range(3))
    tokens = cfg.batch_size * cfg.seq_len
    tok_s = tokens / ((fwd + bwd + opt) / 1000)
    row = dict(variant=name, tok_per_s=tok_s, mfu_measured=flops * tok_s / peak if peak else None,
               mfu_datasheet=flops * tok_s / 989e12 if device == "cuda" else None, fwd_ms=fwd, bwd_ms=bwd, opt_ms=opt,
               peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None,
               tokens_per_step=tokens, flops_per_token=flops, n_layer=mcfg.n_layer,
               params=sum(p.numel() for p in model.parameters()))
    del model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def train_bench(config, overrides, steps, warmup, device, variants, peer, out, write):
    env, rows = environment(device), []
    peak = matmul_peak(device) * 1e12 if device == "cuda" else 0.0
    env["matmul_peak_tflops"] = peak / 1e12
    print(f"{env['device']} | torch {env['torch']} | {config} {' '.join(overrides)} | {steps} steps after {warmup}"
          + (f" | bf16 matmul peak measured {peak / 1e12:.0f} TFLOP/s" if peak else ""))
    print(f"{'variant':20s} {'tok/s':>9s} {'MFU meas.':>9s} {'MFU 989':>8s} {'peak GiB':>8s} {'fwd ms':>7s} {'bwd ms':>7s} "
          f"{'opt ms':>7s}")
    table = [("variant", "variant"), ("tok/s", "tok_per_s"), ("MFU (measured peak)", "mfu_measured"),
             ("MFU (989 TFLOP/s)", "mfu_datasheet"), ("peak GiB", "peak_gib"), ("fwd ms", "fwd_ms"),
             ("bwd ms", "bwd_ms"), ("opt ms", "opt_ms")]
    kind = f"train_step_{os.path.basename(config)[:-3]}"
    # "all on" and the peer first: a time-boxed run that stops early has the comparison that matters most
    order = variants[:1] + (["transformers peer"] if peer else []) + variants[1:]
    for name in order:
        extra = [f"--{k}={v}" for k, v in VARIANTS.get(name, {}).items()]
        row = measure(name, config, overrides + extra, steps, warmup, device, peak)
        rows.append(row)
        pct = lambda v: f"{100 * v:8.1f}%" if v is not None else f"{'-':>9s}"
        print(f"{name:20s} {row['tok_per_s']:9,.0f} {pct(row['mfu_measured'])} {pct(row['mfu_datasheet'])[1:]} "
              f"{row['peak_gib'] or 0:8.1f} {row['fwd_ms']:7.1f} {row['bwd_ms']:7.1f} {row['opt_ms']:7.1f}", flush=True)
        save(kind, env, rows, table, out, False, "", quiet=True)  # what is done so far survives a timeout
    if peer and len(rows) > 1:
        print(f"nano360 (all on) / transformers peer: {rows[0]['tok_per_s'] / rows[1]['tok_per_s']:.2f}x tokens/s")
    return save(kind, env, rows, table, out, write, f"{config} {' '.join(overrides)}, {steps} steps after {warmup}")


def layers_bench(config, overrides, layers, steps, warmup, gpus, device, out, write):
    """A wide model with few layers, timed at two depths: the step time per layer (the
    difference over the layers added) and what is not layers, then the full depth's
    tokens/s per GPU on `gpus` GPUs under FSDP (the optimizer works on 1/gpus of the
    parameters; communication assumed hidden behind compute, and its bound if not said)."""
    from config import load_config
    env = environment(device)
    peak = matmul_peak(device) * 1e12 if device == "cuda" else 0.0
    env["matmul_peak_tflops"] = peak / 1e12
    full = load_config([config, f"--device={device}", *overrides])[1]
    rows = []
    for n in layers:
        rows.append(measure(f"{n} layers", config, overrides + [f"--n_layer={n}"], steps, warmup, device, peak))
        r = rows[-1]
        print(f"{n} layers: fwd+bwd {r['fwd_ms'] + r['bwd_ms']:.1f} ms, optimizer {r['opt_ms']:.1f} ms, "
              f"{r['params']:,} parameters", flush=True)
    (a, b), L = rows, full.n_layer
    per_layer = ((b["fwd_ms"] + b["bwd_ms"]) - (a["fwd_ms"] + a["bwd_ms"])) / (b["n_layer"] - a["n_layer"])
    rest = a["fwd_ms"] + a["bwd_ms"] - per_layer * a["n_layer"]  # embedding, final norm, head and loss
    opt_layer = (b["opt_ms"] - a["opt_ms"]) / (b["n_layer"] - a["n_layer"])
    opt_full = (a["opt_ms"] + opt_layer * (L - a["n_layer"])) / gpus  # each GPU steps its shard
    step = rest + per_layer * L + opt_full
    params = a["params"] + (b["params"] - a["params"]) // (b["n_layer"] - a["n_layer"]) * (L - a["n_layer"])
    flops = a["flops_per_token"] + (b["flops_per_token"] - a["flops_per_token"]) / (b["n_layer"] - a["n_layer"]) * (L - a["n_layer"])
    tok_s = a["tokens_per_step"] / (step / 1000)
    comm_ms = 3 * 2 * params * (gpus - 1) / gpus / 450e9 * 1000  # 2 all-gathers + 1 reduce-scatter of bf16, 450 GB/s NVLink
    result = dict(variant=f"{L} layers on {gpus} GPUs (extrapolated)", layers_measured=layers, per_layer_ms=per_layer,
                  rest_ms=rest, opt_per_layer_ms=opt_layer, opt_full_per_gpu_ms=opt_full, step_ms=step, params=params,
                  flops_per_token=flops, tok_per_s=tok_s, mfu_datasheet=flops * tok_s / 989e12 if device == "cuda" else None,
                  mfu_measured=flops * tok_s / peak if peak else None, comm_bound_ms=comm_ms,
                  tok_per_s_if_comm_not_hidden=a["tokens_per_step"] / ((step + comm_ms) / 1000))
    rows.append(result)
    print(f"per layer {per_layer:.2f} ms fwd+bwd; the rest {rest:.2f} ms; optimizer {opt_layer:.3f} ms per layer")
    print(f"{L} layers ({params / 1e9:.2f}B parameters) on {gpus} GPUs: {rest:.1f} + {L} x {per_layer:.2f} + "
          f"optimizer {opt_full:.1f} ms (1/{gpus} of the parameters) = {step:.1f} ms per {a['tokens_per_step']} tokens "
          f"-> {tok_s:,.0f} tokens/s per GPU" + (f", MFU {100 * result['mfu_datasheet']:.1f}% of 989 TFLOP/s"
                                                   if result["mfu_datasheet"] else ""))
    print(f"if FSDP's communication were not hidden: + {comm_ms:.0f} ms (3 x {2 * params / 1e9:.1f} GB x {gpus - 1}/{gpus} "
          f"at 450 GB/s) -> {result['tok_per_s_if_comm_not_hidden']:,.0f} tokens/s per GPU")
    table = [("variant", "variant"), ("tok/s per GPU", "tok_per_s"), ("MFU (989 TFLOP/s)", "mfu_datasheet"),
             ("fwd ms", "fwd_ms"), ("bwd ms", "bwd_ms"), ("opt ms", "opt_ms")]
    return save(f"layers_{os.path.basename(config)[:-3]}", env, rows, table, out, write,
                f"{config} at {layers} layers, extrapolated to {L} on {gpus} GPUs")


# ----------------------------------------------------------------------------- the loss over a large vocabulary

def _loss_run(args):
    # one variant in a fresh process, so that the peak memory is its own
    import resource, time
    import torch
    from model import ChunkedCrossEntropy
    tokens, vocab, dim, chunk, device = args
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    x = torch.randn(tokens, dim, generator=gen).to(device, dtype).requires_grad_()
    w = (torch.randn(vocab, dim, generator=gen) * 0.02).to(device, dtype).requires_grad_()
    t = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    for _ in range(3):
        if chunk:
            loss = ChunkedCrossEntropy.apply(x, w, t, 1.0, chunk)
        else:
            loss = torch.nn.functional.cross_entropy((x @ w.t()).float(), t)
        loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / 3 * 1000
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(ms=ms, extra_gib=(peak - base) / 2 ** 30, loss=loss.item())


def loss_bench(tokens, vocab, dim, chunks, device, out, write):
    import multiprocessing as mp
    env, rows = environment(device), []
    print(f"{env['device']} | loss over {tokens} tokens x {vocab} vocabulary, d {dim} | forward + backward")
    print(f"{'variant':22s} {'ms':>8s} {'extra GiB':>10s} {'loss':>8s}")
    ctx = mp.get_context("spawn")
    for chunk in [0] + chunks:
        with ctx.Pool(1) as pool:
            r = pool.apply(_loss_run, ((tokens, vocab, dim, chunk, device),))
        name = f"chunks of {chunk}" if chunk else "full logits (torch)"
        rows.append(dict(variant=name, **r))
        print(f"{name:22s} {r['ms']:8.1f} {r['extra_gib']:10.2f} {r['loss']:8.4f}", flush=True)
        save("chunked_loss", env, rows, [], out, False, "", quiet=True)
    table = [("variant", "variant"), ("ms", "ms"), ("extra GiB", "extra_gib"), ("loss", "loss")]
    return save("chunked_loss", env, rows, table, out, write,
                f"{tokens} tokens x {vocab} vocabulary, d {dim}, forward + backward; extra memory over the inputs")


# ----------------------------------------------------------------------------- the GPU check: all of it, one command

def gpu_parts(device):
    """(name, seconds it may take, argv, the file its JSON goes to or None) of every part of
    `gpu`, most important first; on a CPU, tiny shapes under the interpreter."""
    me, d = [sys.executable, os.path.abspath(__file__)], f"--device={device}"
    pytest = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", os.path.join(ROOT, "tests")]
    cfg = lambda name: os.path.join(ROOT, "config", name + ".py")
    if device == "cuda":
        return [
            ("pytest -m gpu", 90, pytest, None),
            ("flash attention", 70, me + ["attention", "--dims=64,128,192", "--lengths=1024,2048,4096,8192", "--causal_only"],
             "flash_attention"),
            ("adamw", 30, me + ["adamw"], "adamw"),
            ("train neo_1b", 100, me + ["train", cfg("neo_1b"), "--steps=5", "--warmup=2", "--", "--compile=True"],
             "train_step_neo_1b"),
            ("train neo_125m", 50, me + ["train", cfg("neo_125m"), "--steps=5", "--warmup=2", "--", "--compile=True"],
             "train_step_neo_125m"),
            ("neo7b layers", 70, me + ["layers", cfg("neo7b"), "--layers=1,3", "--steps=3", "--warmup=2", "--",
                                       "--compile=True"], "layers_neo7b"),
            ("chunked loss", 30, me + ["loss"], "chunked_loss")]
    tiny = ["--", "--n_layer=2", "--d_model=32", "--n_head=2", "--head_dim=16", "--ffn_hidden=64", "--batch_size=2",
            "--seq_len=32", "--max_seq_len=32"]
    return [
        ("pytest -m gpu", 120, pytest, None),
        ("flash attention", 60, me + ["attention", d, "--dims=16", "--lengths=64", "--tokens=128", "--width=32",
                                      "--causal_only"], "flash_attention"),
        ("adamw", 60, me + ["adamw", d, "--cases=toy", "--vocab=512", *tiny], "adamw"),
        ("train toy", 120, me + ["train", cfg("toy"), d, "--steps=1", "--warmup=1", "--variants=all on,sdpa attention",
                                 *tiny, "--optimizer=adamw_triton"], "train_step_toy"),
        ("toy layers", 60, me + ["layers", cfg("toy"), d, "--layers=1,2", "--steps=1", "--warmup=1", *tiny], "layers_toy"),
        ("chunked loss", 60, me + ["loss", d, "--tokens=64", "--vocab=1024"], "chunked_loss")]


def run_part(argv, seconds, log):
    """(status, seconds): argv run in its own process group, killed with its children (compile
    workers) at the time limit; its output appended to log."""
    import signal, time
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(argv)}   (at most {seconds} s)\n")
        f.flush()
        p = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            rc = p.wait(timeout=seconds)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            status = f"stopped at its {seconds} s limit"
        f.write(f"--- {status}, {time.time() - t0:.0f} s\n")
    return status, time.time() - t0


def figures(name, raw, log_text):
    """Summary rows (case, nano360, peer, ratio, target) of one part's raw rows."""
    out, rows = [], raw.get("rows", []) if raw else []
    if name == "pytest -m gpu":
        last = [line for line in log_text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
        out.append(("GPU tests", last[-1].strip("= ") if last else "no result", "", "", "all pass"))
    elif name == "flash attention":
        for r in [r for r in rows if r["impl"] == "triton"]:
            peers = [p for p in rows if p["impl"] != "triton" and (p["D"], p["T"], p["causal"]) == (r["D"], r["T"], r["causal"])]
            best = max(peers, key=lambda p: p["fwd_bwd_tflops"], default=None)
            out.append((f"fwd+bwd D={r['D']} T={r['T']}{' causal' if r['causal'] else ''}",
                        f"{r['fwd_bwd_tflops']:.3g} TFLOP/s", f"{best['impl']} {best['fwd_bwd_tflops']:.3g}" if best else "",
                        f"{r['fwd_bwd_tflops'] / best['fwd_bwd_tflops']:.2f}x" if best else "", ">= 1.3x"))
        by = {(r["D"], r["T"]): r["fwd_bwd_tflops"] for r in rows if r["impl"] == "triton" and r["causal"]}
        for (D, T), v in sorted(by.items()):
            if D == 192 and (128, T) in by:
                out.append((f"D=192 / D=128 per FLOP, T={T}", f"{v:.0f} / {by[(128, T)]:.0f}", "", f"{v / by[(128, T)]:.2f}",
                            ">= 0.85"))
    elif name == "adamw":
        for r in [r for r in rows if r["impl"] == "triton"]:
            peer = next((p for p in rows if p["impl"] == "torch-fused" and p["case"] == r["case"]), None)
            out.append((f"step, {r['case']} ({r['params'] / 1e6:.3g}M)", f"{r['gb_per_s'] / 1e3:.3g} TB/s",
                        f"torch fused {peer['gb_per_s'] / 1e3:.3g}" if peer else "",
                        f"{r['gb_per_s'] / peer['gb_per_s']:.2f}x" if peer else "", ">= 1.1x"))
    elif name.startswith("train"):
        base = next((r for r in rows if r["variant"] == "all on"), None)
        peer = next((r for r in rows if r["variant"] == "transformers peer"), None)
        mfu = lambda r: f", MFU {100 * r['mfu_datasheet']:.1f}% ({100 * r['mfu_measured']:.1f}% of measured)" \
            if r.get("mfu_datasheet") else ""
        gib = lambda r: f", {r['peak_gib']:.1f} GiB" if r.get("peak_gib") else ""
        for r in rows:
            ref = peer if r is base else base
            if r is peer:
                continue
            out.append((f"{name[6:]}: {r['variant']}", f"{r['tok_per_s']:,.0f} tok/s{mfu(r)}{gib(r)}",
                        f"{ref['variant']} {ref['tok_per_s']:,.0f}" if ref else "",
                        f"{r['tok_per_s'] / ref['tok_per_s']:.2f}x" if ref else "",
                        ">= 2x peer, >= 55% MFU (neo_1b)" if r is base else "all on is faster"))
    elif name.endswith("layers"):
        for r in rows:
            if "per_layer_ms" in r:
                mfu = f", MFU {100 * r['mfu_datasheet']:.1f}%" if r.get("mfu_datasheet") else ""
                out.append((r["variant"], f"{r['tok_per_s']:,.0f} tok/s per GPU{mfu}",
                            f"{r['per_layer_ms']:.2f} ms/layer + {r['rest_ms']:.1f} + opt {r['opt_full_per_gpu_ms']:.1f}",
                            f"{r['tok_per_s_if_comm_not_hidden']:,.0f} if comm. not hidden", ""))
    elif name == "chunked loss":
        full = next((r for r in rows if r["variant"].startswith("full")), None)
        for r in rows:
            if r is not full:
                out.append((r["variant"], f"{r['ms']:.1f} ms, +{r['extra_gib']:.2f} GiB",
                            f"full logits {full['ms']:.1f} ms, +{full['extra_gib']:.2f} GiB" if full else "",
                            f"{full['extra_gib'] / max(r['extra_gib'], 1e-9):.1f}x less memory" if full else "", ""))
    return out


def gpu_check(device, out, budget):
    """Every GPU test and benchmark, each part time-boxed and all within budget seconds, into out/:
    gpu_check.md (one table, versions, nvidia-smi), gpu_check.log (every part's output) and
    each benchmark's raw JSON: at most 8 files."""
    import time
    os.makedirs(out, exist_ok=True)
    env, t0 = environment(device), time.time()
    log, report = os.path.join(out, "gpu_check.log"), os.path.join(out, "gpu_check.md")
    open(log, "w").close()
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    versions = {"torch": env["torch"], "triton": env["triton"], "python": env["python"]}
    for mod in ("transformers", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = "not installed"
    rows, parts = [], []
    for name, seconds, argv, kind in gpu_parts(device):
        left = budget - (time.time() - t0)
        if left < 15:
            parts.append((name, "not run: the time budget was spent", 0))
            continue
        start = os.path.getsize(log)
        cut = argv.index("--") if "--" in argv else len(argv)  # --out before the config's overrides
        status, took = run_part(argv[:cut] + [f"--out={out}"] * bool(kind) + argv[cut:], int(min(seconds, left)), log)
        with open(log, errors="replace") as f:
            f.seek(start)
            text = f.read()
        path = os.path.join(out, f"{kind}_{env['date']}.json") if kind else None
        raw = json.load(open(path)) if path and os.path.exists(path) else None
        parts.append((name, status, took))
        rows += [(name, *r) for r in figures(name, raw, text)]
        write_report(report, env, versions, rev, device, budget, time.time() - t0, parts, rows)
    print(open(report).read())
    return 0 if all(s == "ok" for _, s, _ in parts) else 1


def write_report(path, env, versions, rev, device, budget, took, parts, rows):
    lines = [f"# GPU check, {env['device']}, {env['date']}", "",
             f"`python kernels/bench.py gpu` at {rev or 'unknown revision'}; "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; {took:.0f} s of a {budget} s budget", "",
             "| part | case | nano360 | peer | ratio | target |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines += ["", "| part | status | seconds |", "|---|---|---|"]
    lines += [f"| {n} | {s} | {t:.0f} |" for n, s, t in parts]
    if env.get("nvidia_smi"):
        lines += ["", "```", env["nvidia_smi"].rstrip(), "```"]
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["gpu", "compile", "attention", "adamw", "train", "layers", "loss"])
    ap.add_argument("config", nargs="?", default=os.path.join(ROOT, "config", "neo_1b.py"), help="train: the config")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="train: which of " + ", ".join(VARIANTS))
    ap.add_argument("--no_peer", action="store_true", help="train: skip the transformers LlamaForCausalLM peer")
    ap.add_argument("--dims", default="64,96,128,192,256", help="head dims (attention default: 64,128,192)")
    ap.add_argument("--quick", action="store_true", help="compile: causal kernels only")
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    ap.add_argument("--causal_only", action="store_true", help="attention: causal only")
    ap.add_argument("--layers", default="1,3", help="layers: the two depths timed")
    ap.add_argument("--gpus", type=int, default=8, help="layers: the GPUs the full model is extrapolated to")
    ap.add_argument("--vocab", type=int, default=None, help="adamw (default 64000) and loss (65536): the vocabulary")
    ap.add_argument("--budget", type=int, default=480, help="gpu: seconds for all its parts")
    ap.add_argument("--tokens", type=int, default=16384, help="attention: B*T")
    ap.add_argument("--width", type=int, default=2048, help="attention: H*D")
    ap.add_argument("--cases", default="neo_125m,neo_1b,neo7b/8", help="adamw: configs, /N = one of N FSDP shards")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu (under TRITON_INTERPRET=1) to check the harness")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks"), help="folder of the raw JSON")
    ap.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []  # train: --key=value for the config
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    dims = [int(d) for d in args.dims.split(",")]
    if args.what == "compile":
        return compile_check(dims, args.quick)
    if args.device == "cpu":  # the kernels under the interpreter, set before anything imports triton
        os.environ.setdefault("TRITON_INTERPRET", "1")
    elif not __import__("torch").cuda.is_available():
        sys.exit(f"{args.what}: needs a CUDA GPU (or --device=cpu, which runs the kernels in Triton's interpreter)")
    if args.what == "gpu":
        return gpu_check(args.device, args.out if "--out" in " ".join(argv) else
                         os.path.join(ROOT, "benchmarks", f"gpu_check_{datetime.date.today().isoformat()}"), args.budget)
    if args.what == "adamw":
        return adamw_bench(args.cases.split(","), args.device, args.out, args.write, args.vocab or 64000, overrides)
    if args.what == "loss":  # the Neo shape: 8k tokens, a 64k vocabulary, d 3072
        return loss_bench(args.tokens if "--tokens" in " ".join(sys.argv) else 8192, args.vocab or 65536,
                          3072 if args.device == "cuda" else 1024, [1024, 4096], args.device, args.out, args.write)
    if args.what == "train":
        return train_bench(args.config, overrides, args.steps, args.warmup, args.device,
                           [v for v in args.variants.split(",") if v], not args.no_peer, args.out, args.write)
    if args.what == "layers":
        return layers_bench(args.config, overrides, [int(n) for n in args.layers.split(",")], args.steps, args.warmup,
                            args.gpus, args.device, args.out, args.write)
    if "--dims" not in " ".join(sys.argv):
        dims = [64, 128, 192]
    return attention_bench(dims, [int(t) for t in args.lengths.split(",")], args.tokens, args.width, args.device,
                           args.out, args.write, (True,) if args.causal_only else (True, False))


if __name__ == "__main__":
    sys.exit(main())
