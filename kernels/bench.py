"""
Benchmarks and build checks of the Triton kernels.

    python kernels/bench.py compile [--dims=64,128] [--quick]
        compile every kernel at its GPU block sizes for an H100 (sm_90) with Triton's own
        ptxas: no GPU needed. Prints shared memory, registers and spills per kernel; exits 1
        if one fails to compile or does not fit in shared memory.
    python kernels/bench.py attention [--dims=64,128,192] [--lengths=1024,...] [--write]
        on a GPU: TFLOP/s of forward, backward and forward+backward of flash_attn against
        torch's scaled_dot_product_attention (flash and cuDNN backends), bf16, B*T = 16k
        tokens, H*D = 2048. Raw results go to benchmarks/flash_attention_<date>.json (with
        nvidia-smi and versions); --write appends the table to BENCHMARKS.md.

FLOPs: forward 4*B*H*T^2*D (halved when causal), backward 2.5x forward (dQ, dK, dV and the
recomputed scores), forward+backward 3.5x.
"""
import argparse, datetime, json, os, re, subprocess, sys, tempfile
from concurrent.futures import ProcessPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SMEM_SM90 = 232448  # bytes of shared memory one block may use on an H100


# ----------------------------------------------------------------------------- compile check

def _compile(job):
    name, D, causal, doc = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import kernels.flash_attention as fa
    kernel = dict(fwd=fa._fwd_kernel, dkdv=fa._bwd_dkdv_kernel, dq=fa._bwd_dq_kernel)[name]
    BM, BN, warps, stages = fa.block_sizes(D, interpret=False)[name]
    const = dict(D=D, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_M=BM, BLOCK_N=BN, CAUSAL=causal, DOC=doc,
                 PREC="tf32", UPCAST=False)
    sig = {}
    for a in kernel.arg_names:
        sig[a] = ("constexpr" if a in const else "*bf16" if a in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")
                  else "*fp32" if a in ("LSE", "DELTA") else "*i32" if a.startswith("SEG") else
                  "fp32" if "scale" in a else "i32")
    # what a launch specialises on: pointers and strides divisible by 16 (any T)
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(kernel.arg_names)
             if sig[a].startswith("*") or re.fullmatch(r"s[a-z]{2}", a)}
    row = f"{name:5s} D={D:<4d} {'causal' if causal else 'full  '} {'docs' if doc else '    '} " \
          f"{BM:>3d}x{BN:<3d} {warps}w {stages}s"
    try:
        k = triton.compile(ASTSource(kernel, sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=warps, num_stages=stages))
    except Exception as e:  # noqa: BLE001 - reported, and the exit status says so
        return False, f"{row}  FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs, spill = re.search(r"REG:(\d+)", usage), re.search(r"STACK:(\d+)", usage)
    fits = k.metadata.shared <= SMEM_SM90
    return fits, (f"{row}  smem {k.metadata.shared // 1024:3d} KiB  regs {regs.group(1) if regs else '?':>3s}  "
                  f"spill {spill.group(1) if spill else '?':>4s} B  {'ok' if fits else 'TOO MUCH SHARED MEMORY'}")


def compile_check(dims, quick):
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("compile: unset TRITON_INTERPRET (the interpreter compiles nothing)")
    variants = [(True, False), (True, True)] if quick else [(c, d) for c in (True, False) for d in (False, True)]
    jobs = [(name, D, c, d) for D in dims for c, d in variants for name in ("fwd", "dkdv", "dq")]
    print(f"compiling {len(jobs)} kernels for sm_90 (bf16)")
    ok = True
    with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as ex:
        for fits, line in ex.map(_compile, jobs):
            print(line, flush=True)
            ok &= fits
    return 0 if ok else 1


# ----------------------------------------------------------------------------- attention speed

def environment():
    import torch, triton
    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout if torch.cuda.is_available() else ""
    return dict(date=datetime.date.today().isoformat(), device=torch.cuda.get_device_name() if smi else "cpu",
                torch=torch.__version__, triton=triton.__version__, python=sys.version.split()[0], nvidia_smi=smi)


def attention_bench(dims, lengths, tokens, width, write):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench
    from kernels.flash_attention import flash_attn
    if not torch.cuda.is_available():
        sys.exit("attention: needs a CUDA GPU")
    env, rows = environment(), []
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
        for causal in (True, False):
            for T in lengths:
                B, H = max(1, tokens // T), max(1, width // D)
                gen = torch.Generator("cuda").manual_seed(0)
                q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, generator=gen)
                           .requires_grad_() for _ in range(3))
                do = torch.randn_like(q)
                flops = 4 * B * H * T * T * D / (2 if causal else 1)
                ref = impls["sdpa-flash"](q, k, v, causal)
                for name, fn in impls.items():
                    try:
                        out = fn(q, k, v, causal)
                        err = (out - ref).abs().max().item()
                        fwd = do_bench(lambda: fn(q, k, v, causal), warmup=25, rep=100)
                        bwd = do_bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True),
                                       warmup=25, rep=100)
                        both = do_bench(lambda: torch.autograd.grad(fn(q, k, v, causal), (q, k, v), do),
                                        warmup=25, rep=100)
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
    os.makedirs(os.path.join(ROOT, "benchmarks"), exist_ok=True)
    path = os.path.join(ROOT, "benchmarks", f"flash_attention_{env['date']}.json")
    json.dump(dict(command=" ".join(sys.argv), env=env, rows=rows), open(path, "w"), indent=1)
    print(f"wrote {path}")
    if write:
        lines = [f"\n## Flash attention, {env['device']}, {env['date']}\n",
                 f"`python kernels/bench.py {' '.join(sys.argv[1:])}`; torch {env['torch']}, triton {env['triton']}; "
                 f"bf16, B*T = {tokens}, H*D = {width}; TFLOP/s (raw: benchmarks/{os.path.basename(path)})\n",
                 "| impl | causal | D | T | fwd | bwd | fwd+bwd |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['impl']} | {r['causal']} | {r['D']} | {r['T']} | {r['fwd_tflops']:.0f} | {r['bwd_tflops']:.0f} "
                  f"| {r['fwd_bwd_tflops']:.0f} |" for r in rows]
        with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as f:
            f.write("\n".join(lines) + "\n")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["compile", "attention"])
    ap.add_argument("--dims", default="64,96,128,192,256", help="head dims (attention default: 64,128,192)")
    ap.add_argument("--quick", action="store_true", help="compile: causal kernels only")
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    ap.add_argument("--tokens", type=int, default=16384, help="attention: B*T")
    ap.add_argument("--width", type=int, default=2048, help="attention: H*D")
    ap.add_argument("--write", action="store_true", help="attention: append the table to BENCHMARKS.md")
    args = ap.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    if args.what == "compile":
        return compile_check(dims, args.quick)
    if "--dims" not in " ".join(sys.argv):
        dims = [64, 128, 192]
    return attention_bench(dims, [int(t) for t in args.lengths.split(",")], args.tokens, args.width, args.write)


if __name__ == "__main__":
    sys.exit(main())
