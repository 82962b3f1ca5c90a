"""
What every GPU benchmark of benchmarks/ shares: the project on sys.path (so `import train`
works from any working directory), the device and versions a figure was measured on, a
timer, and where the raw rows go: out/<kind>_<date>.json, and with --write a table appended
to BENCHMARKS.md.

    import harness  # from a file in benchmarks/, before importing anything of the project

Nothing here imports torch or triton at import time: a benchmark sets TRITON_INTERPRET
(--device=cpu) before triton is first imported.
"""
import datetime, json, os, shlex, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def split_overrides(argv):
    """(the benchmark's own arguments, the --key=value config overrides after `--`)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def measure_options(p):
    """The options of every subcommand that measures: --device, --out, --write."""
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cuda, or cpu (under TRITON_INTERPRET=1) to check the harness")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks"), help="folder of the raw JSON")
    p.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    return p


def use_device(device, what):
    """Set up for device; call before anything imports triton. A CPU runs the kernels in
    Triton's interpreter; cuda without a GPU ends the command in one line."""
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
        return
    import torch
    if not torch.cuda.is_available():
        sys.exit(f"{what}: needs a CUDA GPU (or --device=cpu, which runs the kernels in "
                 "Triton's interpreter)")


def environment(device):
    """The date, the device, nvidia-smi and the versions a figure was measured with."""
    import torch, triton
    smi = ""
    if device == "cuda":
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
    return dict(date=datetime.date.today().isoformat(),
                device=torch.cuda.get_device_name() if smi else "cpu",
                torch=torch.__version__, triton=triton.__version__,
                python=sys.version.split()[0], nvidia_smi=smi)


def timed(fn, device, reps=50):
    """Milliseconds per call: triton's do_bench on a GPU (flushes L2, takes the median), a
    plain clock over 3 calls on a CPU (the interpreter is too slow for more)."""
    if device == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=5, rep=reps)
    fn()
    t = time.perf_counter()
    for _ in range(3):
        fn()
    return (time.perf_counter() - t) / 3 * 1000


def command():
    """This process's command line as one would type it from the project root."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return "python " + shlex.join([script, *sys.argv[1:]])  # quoted: it can be pasted back


def cell(v):
    return f"{v:.3g}" if isinstance(v, float) else "" if v is None else str(v)


def markdown(kind, env, rows, table, what, raw):
    """The lines of one table in BENCHMARKS.md: a heading, the command, then the rows.
    table: [(column heading, row key)]."""
    lines = [f"\n## {kind}, {env['device']}, {env['date']}\n",
             f"`{command()}`; torch {env['torch']}, triton {env['triton']}; "
             f"{what} (raw: benchmarks/{raw})\n",
             "| " + " | ".join(h for h, _ in table) + " |",
             "|" + "---|" * len(table)]
    lines += ["| " + " | ".join(cell(r.get(k)) for _, k in table) + " |" for r in rows]
    return lines


def save(kind, env, rows, table, out, write, what, quiet=False):
    """The raw rows (with nvidia-smi and versions) to out/<kind>_<date>.json, and with write a
    table in BENCHMARKS.md. Called after every row with quiet=True: a benchmark killed at its
    time limit leaves what it had measured."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{kind}_{env['date']}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(command=command(), env=env, rows=rows), f, indent=1, default=str)
    os.replace(path + ".tmp", path)  # a process killed mid-write leaves the last whole file
    if quiet:
        return 0
    print(f"wrote {path}")
    if write:
        lines = markdown(kind, env, rows, table, what, os.path.basename(path))
        with open(os.path.join(ROOT, "BENCHMARKS.md"), "a") as f:
            f.write("\n".join(lines) + "\n")
    return 0
