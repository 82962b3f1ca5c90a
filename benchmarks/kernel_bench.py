"""
Benchmarks and build checks of the Triton kernels (nanokernels/).

    python benchmarks/kernel_bench.py compile [--dims=64,128] [--quick]
        compile every kernel at its GPU block sizes for an H100 (sm_90) with Triton's own
        ptxas: no GPU needed. Prints shared memory, registers and spills per kernel; exits 1
        if one fails to compile or does not fit in shared memory.
    python benchmarks/kernel_bench.py attention [--dims=64,128,192] [--lengths=1024,...] [--write]
        on a GPU: TFLOP/s of forward, backward and forward+backward of flash_attn against
        torch's scaled_dot_product_attention (flash and cuDNN backends), bf16, B*T = 16k
        tokens, H*D = 2048. Raw results go to benchmarks/flash_attention_<date>.json (with
        nvidia-smi and versions); --write appends the table to BENCHMARKS.md.
    python benchmarks/kernel_bench.py adamw [--cases=neo_125m,neo_1b,neo7b/8] [--write]
        on a GPU: ms per step of nanokernels.adamw.AdamW against torch.optim.AdamW
        (fused=True and foreach=True) on the parameter shapes of a config (neo7b/8: one of 8
        FSDP shards), effective bandwidth at 28 bytes per parameter, and clip + step.
    python benchmarks/kernel_bench.py loss [--tokens=8192]
        the training loss over a 64k vocabulary: full fp32 logits against model.py's
        ChunkedCrossEntropy (loss_chunk), time and extra peak memory, each in a fresh process.

--device=cpu (with TRITON_INTERPRET=1) runs attention, adamw and loss on a CPU, slowly, to
check the harness; --out=DIR writes the raw JSON elsewhere than benchmarks/.

FLOPs: forward 4*B*H*T^2*D (halved when causal), backward 2.5x forward (dQ, dK, dV and the
recomputed scores), forward+backward 3.5x.
"""
import argparse, math, os, re, subprocess, sys, tempfile
from concurrent.futures import ProcessPoolExecutor

import harness
from harness import ROOT, environment, save, timed

SMEM_SM90 = 232448  # bytes of shared memory one block may use on an H100


# ----------------------------------------------------------------------------- compile check

def build(kernel, const, types, warps, stages):
    """Compile for sm_90: (shared bytes, registers, spilled bytes). types: argument -> Triton
    type, i32 for any not named."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    sig = {a: "constexpr" if a in const else types.get(a, "i32") for a in kernel.arg_names}
    # what a launch specialises on: pointers and strides divisible by 16 (lengths anything)
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(kernel.arg_names)
             if sig[a].startswith("*") or re.fullmatch(r"s[a-z]{2}", a)}
    k = triton.compile(ASTSource(kernel, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=warps, num_stages=stages))
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([os.path.join(bin_dir, "cuobjdump"), "-res-usage", f.name],
                               capture_output=True, text=True).stdout
    regs, spill = re.search(r"REG:(\d+)", usage), re.search(r"STACK:(\d+)", usage)
    return k.metadata.shared, regs.group(1) if regs else "?", spill.group(1) if spill else "?"


def adamw_job(name, pd, gd, sd):
    """(kernel, constants, argument types, row label, warps, stages) of an AdamW kernel."""
    import triton.language as tl
    import nanokernels.adamw as ad
    kernel = dict(adamw=ad._adamw_kernel, sumsq=ad._sumsq_kernel)[name]
    const = dict(P_DTYPE=getattr(tl, pd), G_DTYPE=getattr(tl, gd), S_DTYPE=getattr(tl, sd),
                 BLOCK=ad.BLOCK)
    const = {k: v for k, v in const.items() if k in kernel.arg_names}
    types = dict(ADDR="*i64", HYPER="*fp32", CHUNK_TENSOR="*i32", CHUNK_START="*i64",
                 GRAD_SCALE="*fp32", OUT="*fp32")
    return kernel, const, types, f"{name:5s} param {pd:8s} grad {gd:8s} state {sd:8s}", 8, 1


def flash_job(name, D, causal, doc):
    """(kernel, constants, argument types, row label, warps, stages) of a flash kernel."""
    import triton
    import nanokernels.flash_attention as fa
    kernel = dict(fwd=fa._fwd_kernel, dkdv=fa._bwd_dkdv_kernel, dq=fa._bwd_dq_kernel)[name]
    BM, BN, warps, stages = fa.block_sizes(D, interpret=False)[name]
    const = dict(D=D, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_M=BM, BLOCK_N=BN,
                 CAUSAL=causal, DOC=doc, PREC="tf32", UPCAST=False)
    types = {a: "*bf16" for a in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
    types.update(LSE="*fp32", DELTA="*fp32", SEG_LO="*i32", SEG_HI="*i32",
                 qk_scale="fp32", sm_scale="fp32")
    row = (f"{name:5s} D={D:<4d} {'causal' if causal else 'full  '} {'docs' if doc else '    '} "
           f"{BM:>3d}x{BN:<3d} {warps}w {stages}s")
    return kernel, const, types, row, warps, stages


def compile_one(job):
    """(fits, the line printed) of one job: ("adamw", ...) or ("flash", ...)."""
    make = adamw_job if job[0] == "adamw" else flash_job
    kernel, const, types, row, warps, stages = make(*job[1:])
    try:
        shared, regs, spill = build(kernel, const, types, warps, stages)
    except Exception as e:  # noqa: BLE001 - reported, and the exit status says so
        return False, f"{row}  FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    fits = shared <= SMEM_SM90
    return fits, (f"{row}  smem {shared // 1024:3d} KiB  regs {regs:>3s}  spill {spill:>4s} B  "
                  f"{'ok' if fits else 'TOO MUCH SHARED MEMORY'}")


def compile_jobs(dims, quick):
    """Every flash kernel at each head dim (quick: causal only), the AdamW step at three
    dtype sets and its norm at two."""
    variants = [(True, False), (True, True)]
    if not quick:
        variants = [(c, d) for c in (True, False) for d in (False, True)]
    jobs = [("flash", name, D, c, d) for D in dims for c, d in variants
            for name in ("fwd", "dkdv", "dq")]
    jobs += [("adamw", "adamw", "float32", g, s) for g, s in
             [("float32", "float32"), ("bfloat16", "float32"), ("float32", "bfloat16")]]
    jobs += [("adamw", "sumsq", "float32", g, "float32") for g in ("float32", "bfloat16")]
    return jobs


def compile_check(dims, quick):
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("compile: unset TRITON_INTERPRET (the interpreter compiles nothing)")
    jobs = compile_jobs(dims, quick)
    print(f"compiling {len(jobs)} kernels for sm_90")
    ok = True
    with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as ex:
        for fits, line in ex.map(compile_one, jobs):
            print(line, flush=True)
            ok &= fits
    return 0 if ok else 1


# ----------------------------------------------------------------------------- attention speed

def attention_impls():
    """{name: fn(q, k, v, causal)}: ours, then SDPA's flash and cuDNN backends, all (B, T, H, D)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from nanokernels.flash_attention import flash_attn
    impls = {"triton": lambda q, k, v, causal: flash_attn(q, k, v, causal=causal)}
    for label, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                           ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
        def sdpa(q, k, v, causal, backend=backend):
            with sdpa_kernel(backend):  # SDPA takes (B, H, T, D)
                q, k, v = (t.transpose(1, 2) for t in (q, k, v))
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2)
        impls[label] = sdpa
    return impls


def attention_row(name, fn, q, k, v, do, ref, causal, device):
    """One row: fn's forward, backward and both timed, in ms and TFLOP/s, and its error."""
    import torch
    B, T, H, D = q.shape
    flops = 4 * B * H * T * T * D / (2 if causal else 1)
    o = fn(q, k, v, causal)
    err = (o - ref).abs().max().item()
    fwd = timed(lambda: fn(q, k, v, causal), device)
    bwd = timed(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True), device)
    both = timed(lambda: torch.autograd.grad(fn(q, k, v, causal), (q, k, v), do), device)
    return dict(impl=name, causal=causal, D=D, T=T, B=B, H=H, fwd_ms=fwd, bwd_ms=bwd,
                fwd_bwd_ms=both, fwd_tflops=flops / fwd / 1e9, bwd_tflops=2.5 * flops / bwd / 1e9,
                fwd_bwd_tflops=3.5 * flops / both / 1e9, max_abs_err_vs_sdpa=err)


def attention_bench(dims, lengths, tokens, width, device, out, write, causals=(True, False)):
    import torch
    env, rows, impls = environment(device), [], attention_impls()
    print(f"{env['device']} | torch {env['torch']} | triton {env['triton']} | bf16, "
          f"B*T = {tokens}, H*D = {width}")
    print(f"{'impl':11s} {'causal':6s} {'D':>4s} {'T':>6s} {'fwd':>7s} {'bwd':>7s} "
          f"{'fwd+bwd':>8s}  TFLOP/s  max err vs sdpa")
    for D in dims:
        for causal in causals:
            for T in lengths:
                B, H = max(1, tokens // T), max(1, width // D)
                gen = torch.Generator(device).manual_seed(0)
                q, k, v = (torch.randn(B, T, H, D, device=device, dtype=torch.bfloat16,
                                       generator=gen).requires_grad_() for _ in range(3))
                do = torch.randn_like(q)
                ref = impls["sdpa-flash"](q, k, v, causal)
                for name, fn in impls.items():
                    try:
                        row = attention_row(name, fn, q, k, v, do, ref, causal, device)
                    except RuntimeError as e:  # a backend that does not take this shape
                        print(f"{name:11s} {str(causal):6s} {D:4d} {T:6d}  unavailable: "
                              f"{str(e).splitlines()[0][:80]}")
                        continue
                    rows.append(row)
                    print(f"{name:11s} {str(causal):6s} {D:4d} {T:6d} {row['fwd_tflops']:7.0f} "
                          f"{row['bwd_tflops']:7.0f} {row['fwd_bwd_tflops']:8.0f}           "
                          f"{row['max_abs_err_vs_sdpa']:.1e}", flush=True)
                del q, k, v, do, ref
                save("flash_attention", env, rows, [], out, False, "", quiet=True)
    table = [("impl", "impl"), ("causal", "causal"), ("D", "D"), ("T", "T"),
             ("fwd", "fwd_tflops"), ("bwd", "bwd_tflops"), ("fwd+bwd", "fwd_bwd_tflops")]
    return save("flash_attention", env, rows, table, out, write,
                f"bf16, B*T = {tokens}, H*D = {width}; TFLOP/s")


# ----------------------------------------------------------------------------- AdamW speed

def param_shapes(config, shard, vocab=64000, overrides=()):
    """The parameter shapes of a config's model (64k vocabulary), dim 0 split `shard` ways as
    FSDP does."""
    import torch
    from config import load_config
    from model import GPT
    cfg, mcfg = load_config([os.path.join(ROOT, "config", config + ".py"), *overrides])
    mcfg.vocab_size = vocab
    with torch.device("meta"):
        model = GPT(mcfg)
    return [(-(-p.shape[0] // shard),) + tuple(p.shape[1:]) for p in model.parameters()]


def optimizers():
    """{name: fn(params) -> optimizer}: ours, then torch's fused and foreach."""
    import torch
    from nanokernels.adamw import AdamW
    torch_adamw = torch.optim.AdamW
    return {"triton": lambda ps: AdamW(ps, lr=1e-4, weight_decay=0.1),
            "torch-fused": lambda ps: torch_adamw(ps, lr=1e-4, weight_decay=0.1, fused=True),
            "torch-foreach": lambda ps: torch_adamw(ps, lr=1e-4, weight_decay=0.1, foreach=True)}


def adamw_row(case, shapes, name, opt_of, device):
    """One row: a step, and clip + step, of one optimizer on random parameters and grads."""
    import torch
    gen = torch.Generator(device).manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, device=device, generator=gen)) for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, device=device, generator=gen) * 1e-3
    opt = opt_of(ps)
    opt.step()  # allocates the state
    step_ms = timed(opt.step, device)
    if name == "triton":  # ours clips inside its next step
        clip = lambda: (opt.clip_grad_norm_(1.0), opt.step())
    else:
        clip = lambda: (torch.nn.utils.clip_grad_norm_(ps, 1.0, foreach=True), opt.step())
    clip_ms = timed(clip, device)
    n = sum(math.prod(s) for s in shapes)
    return dict(case=case, params=n, tensors=len(shapes), impl=name, step_ms=step_ms,
                clip_step_ms=clip_ms, gb_per_s=28 * n / step_ms / 1e6)


def adamw_bench(cases, device, out, write, vocab=64000, overrides=()):
    import torch
    env, rows = environment(device), []
    print(f"{env['device']} | torch {env['torch']} | triton {env['triton']} | "
          "fp32 params, grads and state")
    print(f"{'case':14s} {'params':>14s} {'tensors':>7s} {'impl':14s} {'step ms':>8s} "
          f"{'GB/s @28B':>9s} {'clip+step ms':>12s}")
    for case in cases:
        config, _, shard = case.partition("/")
        shapes = param_shapes(config, int(shard or 1), vocab, overrides)
        for name, opt_of in optimizers().items():
            r = adamw_row(case, shapes, name, opt_of, device)
            rows.append(r)
            print(f"{case:14s} {r['params']:14,d} {r['tensors']:7d} {name:14s} "
                  f"{r['step_ms']:8.2f} {r['gb_per_s']:9.0f} {r['clip_step_ms']:12.2f}", flush=True)
            save("adamw", env, rows, [], out, False, "", quiet=True)
            if device == "cuda":
                torch.cuda.empty_cache()
    table = [("case", "case"), ("params", "params"), ("impl", "impl"), ("step ms", "step_ms"),
             ("GB/s at 28 B/param", "gb_per_s"), ("clip + step ms", "clip_step_ms")]
    return save("adamw", env, rows, table, out, write,
                "fp32 params, grads, state; 64k vocabulary")


# ----------------------------------------------------------------- the loss over a large vocabulary

def peak_bytes(device):
    import resource
    import torch
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def loss_run(args):
    # one variant in a fresh process, so that the peak memory is its own
    import time
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
    base = peak_bytes(device)
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
    return dict(ms=ms, extra_gib=(peak_bytes(device) - base) / 2 ** 30, loss=loss.item())


def loss_bench(tokens, vocab, dim, chunks, device, out, write):
    import multiprocessing as mp
    env, rows = environment(device), []
    print(f"{env['device']} | loss over {tokens} tokens x {vocab} vocabulary, d {dim} | "
          "forward + backward")
    print(f"{'variant':22s} {'ms':>8s} {'extra GiB':>10s} {'loss':>8s}")
    ctx = mp.get_context("spawn")
    for chunk in [0] + chunks:
        with ctx.Pool(1) as pool:
            r = pool.apply(loss_run, ((tokens, vocab, dim, chunk, device),))
        name = f"chunks of {chunk}" if chunk else "full logits (torch)"
        rows.append(dict(variant=name, **r))
        print(f"{name:22s} {r['ms']:8.1f} {r['extra_gib']:10.2f} {r['loss']:8.4f}", flush=True)
        save("chunked_loss", env, rows, [], out, False, "", quiet=True)
    table = [("variant", "variant"), ("ms", "ms"), ("extra GiB", "extra_gib"), ("loss", "loss")]
    return save("chunked_loss", env, rows, table, out, write,
                f"{tokens} tokens x {vocab} vocabulary, d {dim}, forward + backward; "
                "extra memory over the inputs")


# ----------------------------------------------------------------------------- the command line

def measured(sub, name, text):
    """A subcommand that measures on a device and saves its rows."""
    return harness.measure_options(sub.add_parser(name, help=text))


def parser():
    ap = argparse.ArgumentParser(prog="python benchmarks/kernel_bench.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("compile", help="every kernel built for sm_90, no GPU needed")
    p.add_argument("--dims", default="64,96,128,192,256", help="head dims")
    p.add_argument("--quick", action="store_true", help="causal kernels only")
    p = measured(sub, "attention", "flash_attn against SDPA's flash and cuDNN backends")
    p.add_argument("--dims", default="64,128,192", help="head dims")
    p.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    p.add_argument("--tokens", type=int, default=16384, help="B*T")
    p.add_argument("--width", type=int, default=2048, help="H*D")
    p.add_argument("--causal_only", action="store_true")
    p = measured(sub, "adamw", "our AdamW against torch's fused and foreach")
    p.add_argument("--cases", default="neo_125m,neo_1b,neo7b/8",
                   help="configs, /N = one of N FSDP shards; -- --key=value overrides them")
    p.add_argument("--vocab", type=int, default=64000)
    p = measured(sub, "loss", "ChunkedCrossEntropy against full logits")
    p.add_argument("--tokens", type=int, default=8192, help="the Neo shape: 8k tokens")
    p.add_argument("--vocab", type=int, default=65536)
    return ap


def ints(text):
    return [int(n) for n in text.split(",")]


def main(argv):
    argv, overrides = harness.split_overrides(argv)
    args = parser().parse_args(argv)
    if args.what == "compile":
        return compile_check(ints(args.dims), args.quick)
    harness.use_device(args.device, args.what)
    if args.what == "attention":
        causals = (True,) if args.causal_only else (True, False)
        return attention_bench(ints(args.dims), ints(args.lengths), args.tokens, args.width,
                               args.device, args.out, args.write, causals)
    if args.what == "adamw":
        return adamw_bench(args.cases.split(","), args.device, args.out, args.write, args.vocab,
                           overrides)
    dim = 3072 if args.device == "cuda" else 1024  # the Neo width; less for the CPU's time
    return loss_bench(args.tokens, args.vocab, dim, [1024, 4096], args.device, args.out,
                      args.write)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
