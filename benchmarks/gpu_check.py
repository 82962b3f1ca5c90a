"""
THE GPU check: every GPU test and benchmark in one command, at most 8 minutes on one H100/H200.

    python benchmarks/gpu_check.py [--out=DIR] [--budget=480] [--device=cuda|cpu]

Most important first, each part in its own process group with its own time limit (one that
fails or hangs does not eat the rest): pytest -m gpu; flash attention against SDPA (D 64,
128, 192, causal, 1k-8k); AdamW against torch's fused; training steps of neo_1b and neo_125m
(compile on) against transformers' Llama, each optimisation off in turn; neo7b's width at 1
and 3 layers, extrapolated to 28 layers on 8 GPUs; the chunked loss. Into DIR (default
benchmarks/gpu_check_<date>/, to be committed), at most 8 files: gpu_check.md (one table of
every figure against its peer and target, the parts' status, versions, nvidia-smi; also
printed), gpu_check.log (all output) and each part's raw JSON. --device=cpu: the same with tiny
shapes under the interpreter (the test suite runs it), into out/gpu_check_cpu_<date>/ by
default (ignored by git: it checks the harness, its figures are not worth keeping). Needs no
rustbpe and no data.

The parts are the table PARTS below; kernel_bench.py and train_bench.py measure, and each
part's summarizer turns its raw rows into rows of the one table.
"""
import argparse, collections, datetime, importlib.metadata, json, os, re, signal, subprocess
import sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # harness, also when a test loads this file by its path
    sys.path.append(HERE)
import harness  # noqa: E402
from harness import ROOT  # noqa: E402


# ----------------------------------------------------------------------------- summarizers
# each: (part, its raw rows, its output) -> [(case, nano360, peer, ratio, target)]

def times(a, b):
    return f"{a / b:.2f}x"


def gpu_tests(part, rows, log):
    """pytest's last summary line."""
    last = [line for line in log.splitlines()
            if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    return [("GPU tests", last[-1].strip("= ") if last else "no result", "", "", part.targets[0])]


def attention(part, rows, log):
    """fwd+bwd of ours against the fastest SDPA backend at each shape; D=192 against D=128
    per FLOP (a head dim the peers do not run fast)."""
    out, ours = [], [r for r in rows if r["impl"] == "triton"]
    shape = lambda r: (r["D"], r["T"], r["causal"])
    for r in ours:
        peers = [p for p in rows if p["impl"] != "triton" and shape(p) == shape(r)]
        best = max(peers, key=lambda p: p["fwd_bwd_tflops"], default=None)
        out.append((f"fwd+bwd D={r['D']} T={r['T']}{' causal' if r['causal'] else ''}",
                    f"{r['fwd_bwd_tflops']:.3g} TFLOP/s",
                    f"{best['impl']} {best['fwd_bwd_tflops']:.3g}" if best else "",
                    times(r["fwd_bwd_tflops"], best["fwd_bwd_tflops"]) if best else "",
                    part.targets[0]))
    by = {(r["D"], r["T"]): r["fwd_bwd_tflops"] for r in ours if r["causal"]}
    for (D, T), v in sorted(by.items()):
        if D == 192 and (128, T) in by:
            out.append((f"D=192 / D=128 per FLOP, T={T}", f"{v:.0f} / {by[(128, T)]:.0f}", "",
                        f"{v / by[(128, T)]:.2f}", part.targets[1]))
    return out


def adamw(part, rows, log):
    """A step of ours against torch's fused AdamW, in bandwidth."""
    out, fused = [], {r["case"]: r for r in rows if r["impl"] == "torch-fused"}
    for r in [r for r in rows if r["impl"] == "triton"]:
        peer = fused.get(r["case"])
        out.append((f"step, {r['case']} ({r['params'] / 1e6:.3g}M)",
                    f"{r['gb_per_s'] / 1e3:.3g} TB/s",
                    f"torch fused {peer['gb_per_s'] / 1e3:.3g}" if peer else "",
                    times(r["gb_per_s"], peer["gb_per_s"]) if peer else "", part.targets[0]))
    return out


def training(part, rows, log):
    """The config as given ("all on") against the transformers peer, each variant against it."""
    base = next((r for r in rows if r["variant"] == "all on"), None)
    peer = next((r for r in rows if r["variant"] == "transformers peer"), None)
    out = []
    for r in rows:
        if r is peer:
            continue
        ref = peer if r is base else base
        mfu = ""
        if r.get("mfu_datasheet"):
            mfu = (f", MFU {100 * r['mfu_datasheet']:.1f}% "
                   f"({100 * r['mfu_measured']:.1f}% of measured)")
        gib = f", {r['peak_gib']:.1f} GiB" if r.get("peak_gib") else ""
        out.append((f"{part.name.removeprefix('train ')}: {r['variant']}",
                    f"{r['tok_per_s']:,.0f} tok/s{mfu}{gib}",
                    f"{ref['variant']} {ref['tok_per_s']:,.0f}" if ref else "",
                    times(r["tok_per_s"], ref["tok_per_s"]) if ref else "",
                    part.targets[0] if r is base else part.targets[1]))
    return out


def layers(part, rows, log):
    """The extrapolated full depth: tokens/s per GPU, and what it is made of."""
    out = []
    for r in [r for r in rows if "per_layer_ms" in r]:
        mfu = f", MFU {100 * r['mfu_datasheet']:.1f}%" if r.get("mfu_datasheet") else ""
        out.append((r["variant"], f"{r['tok_per_s']:,.0f} tok/s per GPU{mfu}",
                    f"{r['per_layer_ms']:.2f} ms/layer + {r['rest_ms']:.1f} + opt "
                    f"{r['opt_full_per_gpu_ms']:.1f}",
                    f"{r['tok_per_s_if_comm_not_hidden']:,.0f} if comm. not hidden",
                    part.targets[0]))
    return out


def chunked_loss(part, rows, log):
    """Each chunk size against the full logits: time, and how much less memory."""
    full = next((r for r in rows if r["variant"].startswith("full")), None)
    out = []
    for r in [r for r in rows if r is not full]:
        peer = ratio = ""
        if full:
            peer = f"full logits {full['ms']:.1f} ms, +{full['extra_gib']:.2f} GiB"
            ratio = f"{full['extra_gib'] / max(r['extra_gib'], 1e-9):.1f}x less memory"
        out.append((r["variant"], f"{r['ms']:.1f} ms, +{r['extra_gib']:.2f} GiB", peer, ratio,
                    part.targets[0]))
    return out


# ----------------------------------------------------------------------------- the parts

# argv: a script of benchmarks/ (given --device and --out before its `--`), or python's own
# arguments; kind: the raw JSON it writes (<kind>_<date>.json), None for none; targets: the
# target text of each kind of row its summarizer makes, the main figure's first
Part = collections.namedtuple("Part", "name device seconds argv kind summarize targets")

KB, TB = "kernel_bench.py", "train_bench.py"
PYTEST = ("-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests")
COMPILE = ("--", "--compile=True")
TINY = ("--", "--n_layer=2", "--d_model=32", "--n_head=2", "--head_dim=16", "--ffn_hidden=64",
        "--batch_size=2", "--seq_len=32", "--max_seq_len=32")
FLASH, ADAMW, NONE = (">= 1.3x", ">= 0.85"), (">= 1.1x",), ("",)
TRAIN_1B = (">= 2x peer, >= 55% MFU", "all on is faster")

PARTS = [  # most important first: a spent budget leaves the last ones not run
    # on a GPU: the shapes that matter
    Part("pytest -m gpu", "cuda", 90, PYTEST, None, gpu_tests, ("all pass",)),
    Part("flash attention", "cuda", 70, (KB, "attention", "--dims=64,128,192",
                                         "--lengths=1024,2048,4096,8192", "--causal_only"),
         "flash_attention", attention, FLASH),
    Part("adamw", "cuda", 30, (KB, "adamw"), "adamw", adamw, ADAMW),
    Part("train neo_1b", "cuda", 100, (TB, "train", "config/neo_1b.py", "--steps=5",
                                       "--warmup=2", *COMPILE),
         "train_step_neo_1b", training, TRAIN_1B),
    Part("train neo_125m", "cuda", 50, (TB, "train", "config/neo_125m.py", "--steps=5",
                                        "--warmup=2", *COMPILE),
         "train_step_neo_125m", training, (">= 2x peer", "all on is faster")),
    Part("neo7b layers", "cuda", 70, (TB, "layers", "config/neo7b.py", "--layers=1,3",
                                      "--steps=3", "--warmup=2", *COMPILE),
         "layers_neo7b", layers, NONE),
    Part("chunked loss", "cuda", 30, (KB, "loss"), "chunked_loss", chunked_loss, NONE),
    # on a CPU: tiny shapes under the interpreter, which check the harness, not the speed
    Part("pytest -m gpu", "cpu", 120, PYTEST, None, gpu_tests, ("all pass",)),
    Part("flash attention", "cpu", 60, (KB, "attention", "--dims=16", "--lengths=64",
                                        "--tokens=128", "--width=32", "--causal_only"),
         "flash_attention", attention, FLASH),
    Part("adamw", "cpu", 60, (KB, "adamw", "--cases=toy", "--vocab=512", *TINY),
         "adamw", adamw, ADAMW),
    Part("train toy", "cpu", 120, (TB, "train", "config/toy.py", "--steps=1", "--warmup=1",
                                   "--variants=all on,sdpa attention", *TINY,
                                   "--optimizer=adamw_triton"),
         "train_step_toy", training, TRAIN_1B),
    Part("toy layers", "cpu", 60, (TB, "layers", "config/toy.py", "--layers=1,2", "--steps=1",
                                   "--warmup=1", *TINY),
         "layers_toy", layers, NONE),
    Part("chunked loss", "cpu", 60, (KB, "loss", "--tokens=64", "--vocab=1024"),
         "chunked_loss", chunked_loss, NONE),
]


def command_of(part, device, out):
    """A part's argv: a benchmark gets --device and --out before the config's overrides."""
    if part.kind is None:
        return [sys.executable, *part.argv]
    args = list(part.argv[1:])
    cut = args.index("--") if "--" in args else len(args)
    ours = [f"--device={device}", f"--out={out}"]
    return [sys.executable, os.path.join(HERE, part.argv[0]), *args[:cut], *ours, *args[cut:]]


# ----------------------------------------------------------------------------- running them

def run_part(argv, seconds, log):
    """(status, seconds): argv run in its own process group, killed with its children (compile
    workers) at the time limit; its output appended to log."""
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(argv)}   (at most {seconds} s)\n")
        f.flush()
        p = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            rc = p.wait(timeout=seconds)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            status = f"stopped at its {seconds} s limit"
        f.write(f"--- {status}, {time.time() - t0:.0f} s\n")
    return status, time.time() - t0


def output_since(log, start):
    with open(log, errors="replace") as f:
        f.seek(start)
        return f.read()


def raw_rows(out, kind, env):
    """The rows a part saved (what it had when stopped at its limit), [] for none."""
    path = os.path.join(out, f"{kind}_{env['date']}.json") if kind else None
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f).get("rows", [])


def versions(env):
    found = {"torch": env["torch"], "triton": env["triton"], "python": env["python"]}
    for name in ("transformers", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_report(path, env, head, parts, rows):
    """gpu_check.md: the command and versions, one table of figures, the parts' status,
    nvidia-smi. Rewritten whole after each part."""
    lines = [f"# GPU check, {env['device']}, {env['date']}", "", head, "",
             "| part | case | nano360 | peer | ratio | target |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines += ["", "| part | status | seconds |", "|---|---|---|"]
    lines += [f"| {n} | {s} | {t:.0f} |" for n, s, t in parts]
    if env.get("nvidia_smi"):
        lines += ["", "```", env["nvidia_smi"].rstrip(), "```"]
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def gpu_check(device, out, budget):
    """Every part of PARTS for device, each time-boxed and all within budget seconds, into
    out/: gpu_check.md, gpu_check.log (every part's output) and each part's raw JSON."""
    from config import git_revision
    os.makedirs(out, exist_ok=True)
    print(f"gpu_check: writing {out}", flush=True)
    env, t0 = harness.environment(device), time.time()
    log, report = os.path.join(out, "gpu_check.log"), os.path.join(out, "gpu_check.md")
    open(log, "w").close()
    stamp = f"`{harness.command()}` at {git_revision()}; " + ", ".join(
        f"{k} {v}" for k, v in versions(env).items())
    rows, parts = [], []
    for part in [p for p in PARTS if p.device == device]:
        left = budget - (time.time() - t0)
        if left < 15:
            parts.append((part.name, "not run: the time budget was spent", 0))
        else:
            start = os.path.getsize(log)
            argv, seconds = command_of(part, device, out), int(min(part.seconds, left))
            status, took = run_part(argv, seconds, log)
            parts.append((part.name, status, took))
            figures = part.summarize(part, raw_rows(out, part.kind, env), output_since(log, start))
            rows += [(part.name, *r) for r in figures]
        head = f"{stamp}; {time.time() - t0:.0f} s of a {budget} s budget"
        write_report(report, env, head, parts, rows)
    print(open(report).read())
    print(f"gpu_check: wrote {report} and the raw output beside it")
    return 0 if all(s == "ok" for _, s, _ in parts) else 1


def default_out(device, date):
    """The folder without --out: on a GPU figures to commit, on a CPU a self-check of the
    harness, kept out of the working tree (out/ is ignored by git)."""
    if device == "cpu":
        return os.path.join(ROOT, "out", f"gpu_check_cpu_{date}")
    return os.path.join(ROOT, "benchmarks", f"gpu_check_{date}")


def main(argv):
    ap = argparse.ArgumentParser(prog="python benchmarks/gpu_check.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="the folder (default benchmarks/gpu_check_<date>"
                    ", with --device=cpu out/gpu_check_cpu_<date>)")
    ap.add_argument("--budget", type=int, default=480, help="seconds for all the parts")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: tiny shapes under TRITON_INTERPRET=1, to check the harness")
    args = ap.parse_args(argv)
    harness.use_device(args.device, "gpu_check")
    out = args.out or default_out(args.device, datetime.date.today().isoformat())
    return gpu_check(args.device, out, args.budget)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
