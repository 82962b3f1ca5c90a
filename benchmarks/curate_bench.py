"""The data pipeline at scale, side by side with datatrove: memory, throughput, workers, near-duplicates.

    python benchmarks/curate_bench.py [--scales 1,4,16] [--peer_scales 1,4] [--work /tmp/curate_bench]

Needs the demo corpus (`python curate.py fetch-demo`) and, for the datatrove columns, datatrove's
venv (set up as benchmarks/datatrove_peer.py's docstring says; --peer names its python). Without
the venv it measures nano360 alone. Prints markdown:

 1. each stage on the demo corpus copied 1x, 4x and 16x (hard links, so a copy is a new file of
    the same documents): MB in, wall seconds, CPU seconds of all its processes, MB per CPU-second
    (MB/s per core), the peak RSS of the main process and of the worst worker; datatrove's
    counterpart on the same input at --peer_scales, and the ratio of MB per CPU-second:
      clean            vs datatrove's Gopher filters (GopherRepetition + GopherQuality), both on
                       the English documents only (datatrove's filters are English-only)
      dedup            vs datatrove's MinHash dedup (signatures, buckets, clusters, filter), on the
                       clean output (nano360's dedup also does exact and paragraph dedup)
      train-tokenizer  (no datatrove counterpart: its sample is bounded, so its memory is too)
      tokenize         vs datatrove's DocumentTokenizer with the same BPE as a tokenizer.json,
                       on the clean output (the copies make it grow with the scale; dedup would
                       remove them)
 2. 1 worker against 2 at --speedup_scale: wall-clock ratio per stage, the best of --repeat runs
 3. near-duplicate recall on tests/helpers.py's planted edits (real English, Chinese and
    Chinese technical text; 1/3/5% of words changed, a paragraph moved, a boilerplate line,
    all three at 1%), and false merges, for nano360 and datatrove's default MinHash
 4. that a curation command imports no torch, and its start-up time

Each stage runs in a fresh process (`python curate.py ...`, `python data.py tokenize ...`) with 2
workers unless said; CPU seconds and peak RSS come from getrusage in that process (RUSAGE_SELF:
the main process; RUSAGE_CHILDREN: the largest of its worker processes).
"""
import argparse, datetime, json, os, platform, shutil, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
PEER = os.path.join(ROOT, "benchmarks", "datatrove_peer.py")
CONFIG = os.path.join(ROOT, "config", "demo_small.py")

MEASURE = """
import json, resource, sys, time
t0 = time.time()
sys.path.insert(0, {root!r})
import curate, data
rc = {{"curate": curate, "data": data}}[sys.argv[1]].main(sys.argv[2:])
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps(dict(rc=rc, seconds=time.time() - t0, cpu_seconds=me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
                      main_mb=me.ru_maxrss / 1024, children_mb=kids.ru_maxrss / 1024)))
"""


def ours(module, *argv, workers=2):
    """Run a nano360 command in a fresh process; its measurements."""
    cmd = [sys.executable, "-c", MEASURE.format(root=ROOT), module, *argv, f"--workers={workers}"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(argv[:2])} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    m = json.loads(r.stdout.strip().splitlines()[-1])
    # 1 worker (or a command with no worker processes, train-tokenizer): the tasks run in the main process
    m["worker_mb"] = m["children_mb"] if workers > 1 and m["children_mb"] > 0 else m["main_mb"]
    return m


def peer(python, *argv):
    """Run benchmarks/datatrove_peer.py under the datatrove venv; its JSON line."""
    r = subprocess.run([python, PEER, *argv], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"datatrove {argv[0]} failed:\n{r.stderr[-3000:]}")
    m = json.loads(r.stdout.strip().splitlines()[-1])
    return dict(seconds=m["seconds"], cpu_seconds=m["cpu_seconds"], main_mb=m["main_rss_mb"],
                worker_mb=m["peak_rss_mb_per_worker"], mb=m["mb_in"], raw=m)


def copies(src, dest, k, names=None):
    """dest/NN_<file>: k hard links to each document file of src (names: only those)."""
    if os.path.isdir(dest):
        return dest
    os.makedirs(dest)
    for j in range(k):
        for f in sorted(os.listdir(src)):
            if f.endswith(".jsonl") and (names is None or f[:-6] in names):
                os.link(os.path.join(src, f), os.path.join(dest, f"{j:02d}_{f}"))
    return dest


def timing(folder):
    return json.load(open(os.path.join(folder, "timing.json")))


def row(stage, scale, m, mb, who="nano360"):
    per_core = mb / max(m["cpu_seconds"], 1e-9)
    return dict(stage=stage, scale=scale, who=who, mb=round(mb, 1), seconds=round(m["seconds"], 1),
                cpu_seconds=round(m["cpu_seconds"], 1), mb_per_core=round(per_core, 2),
                main_mb=round(m["main_mb"]), worker_mb=round(m["worker_mb"]))


def keys(d, tokenizer=None):
    return [f"--source_dir={d}/raw", f"--clean_dir={d}/clean", f"--docs_dir={d}/clean", f"--tokens_dir={d}/tokens",
            f"--tokenizer={tokenizer or d + '/tok.tiktoken'}"]


def pipeline_at(work, k, raw, en_raw, tokenizer, workers=2, suffix=""):
    """nano360's stages at scale k; the rows, and the folders for the peer."""
    d = os.path.join(work, f"x{k}{suffix}")
    copies(raw, os.path.join(d, "raw"), k)
    en = copies(en_raw, os.path.join(work, f"en_x{k}{suffix}", "raw"), k, ("en_books", "en_speeches", "en_docs"))
    rows = []
    m = ours("curate", "clean", CONFIG, *keys(d), workers=workers)
    rows.append(row("clean", k, m, timing(f"{d}/clean")["bytes"] / 1e6))
    m = ours("curate", "clean", CONFIG, f"--source_dir={en}", f"--clean_dir={en}_clean", workers=workers)
    rows.append(row("clean (English only)", k, m, timing(f"{en}_clean")["bytes"] / 1e6))
    m = ours("curate", "dedup", CONFIG, f"--clean_dir={d}/clean", f"--docs_dir={d}/dedup", workers=workers)
    rows.append(row("dedup", k, m, timing(f"{d}/dedup")["bytes"] / 1e6))
    if not suffix:
        m = ours("curate", "train-tokenizer", CONFIG, f"--docs_dir={d}/clean", f"--tokenizer={d}/tok.tiktoken",
                 workers=workers)
        rows.append(row("train-tokenizer", k, m, json.load(open(f"{d}/tok.tiktoken.report.json"))["bytes"] / 1e6))
    m = ours("data", "tokenize", CONFIG, *keys(d, tokenizer or f"{d}/tok.tiktoken"), workers=workers)
    rows.append(row("tokenize", k, m, timing(f"{d}/tokens")["bytes"] / 1e6))
    return rows, d, en


def datatrove_at(python, work, k, d, en, tokenizer_json):
    rows = []
    m = peer(python, "filter", en, f"{work}/dt_x{k}/filter", "--workers=2", "--overwrite")
    rows.append(row("clean (English only)", k, m, m["mb"], "datatrove"))
    m = peer(python, "minhash", f"{d}/clean", f"{work}/dt_x{k}/minhash", "--workers=2", "--overwrite")
    rows.append(row("dedup", k, m, m["mb"], "datatrove"))
    m = peer(python, "tokenize", f"{d}/clean", f"{work}/dt_x{k}/tokens", f"--tokenizer={tokenizer_json}", "--workers=2",
             "--overwrite")
    rows.append(row("tokenize", k, m, m["mb"], "datatrove"))
    return rows


def export_tokenizer_json(tiktoken_path, out_dir):
    """tokenizer.json of our BPE (tokenizer.py's exporter, in its own process)."""
    code = ("import sys; sys.path.insert(0, %r); import tokenizer; r, p, s = tokenizer.read_tiktoken(%r); "
            "tokenizer.export_tokenizer(r, p, s, %r)") % (ROOT, tiktoken_path, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
    return os.path.join(out_dir, "tokenizer.json")


def recall(python, work):
    """Planted near-duplicates: recall per edit and false merges, nano360 and datatrove."""
    import numpy as np
    import dedup
    import helpers as T
    out = []
    for name, (docs, family, pairs) in T.planted_edits().items():
        lang = "en" if name == "en" else "zh"
        root = T.kept_roots(len(docs), dedup.dedup_texts(docs))
        ours_same = lambda a, b: root[a] == root[b]
        distinct = family[:, None] != family[None, :]
        wrong = int(((root[:, None] == root[None, :]) & distinct).sum() // 2)
        res = {"nano360": ({e: np.mean([ours_same(a, b) for a, b, k in pairs if k == e]) for e in T.EDITS}, wrong)}
        if python:
            src = os.path.join(work, "recall", name)
            os.makedirs(src, exist_ok=True)
            with open(os.path.join(src, "docs.jsonl"), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(dict(id=f"{name}-{i}", text=t, lang=lang), ensure_ascii=False) + "\n"
                             for i, t in enumerate(docs))
            peer(python, "minhash", src, os.path.join(work, "recall", name + "_dt"), "--workers=2", "--overwrite",
                 "--cluster_ids")
            cl = json.load(open(os.path.join(work, "recall", name + "_dt", "clusters.json")))
            c = np.array([cl[f"{name}-{i}"] for i in range(len(docs))])
            same = (c[:, None] == c[None, :]) & (c[:, None] >= 0)
            res["datatrove"] = ({e: np.mean([same[a, b] for a, b, k in pairs if k == e]) for e in T.EDITS},
                                int((same & distinct).sum() // 2))
        for who, (r, w) in res.items():
            out.append(dict(set=name, who=who, originals=len(docs) // (1 + len(T.EDITS)),
                            recall={e: round(float(v), 3) for e, v in r.items()}, false_merges=w))
    return out


def startup():
    code = "import sys, time; t = time.time(); import curate; print('torch' in sys.modules, time.time() - t)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    torch, seconds = r.stdout.split()
    t = time.time()
    subprocess.run([sys.executable, "curate.py"], cwd=ROOT, capture_output=True)
    return dict(imports_torch=torch == "True", import_seconds=round(float(seconds), 3),
                command_seconds=round(time.time() - t, 3))


def table(rows, scales):
    print("| stage | scale | MB in | seconds | CPU s | MB/s per core | peak RSS main (MiB) | peak RSS per worker (MiB) "
          "| datatrove MB/s per core | datatrove peak RSS per worker | per-core ratio |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        if r["who"] != "nano360":
            continue
        p = next((x for x in rows if x["who"] == "datatrove" and x["stage"] == r["stage"] and x["scale"] == r["scale"]), None)
        peer_cells = f"{p['mb_per_core']} | {p['worker_mb']} | {r['mb_per_core'] / p['mb_per_core']:.1f}x" if p else " | | "
        print(f"| {r['stage']} | {r['scale']}x | {r['mb']} | {r['seconds']} | {r['cpu_seconds']} | {r['mb_per_core']} | "
              f"{r['main_mb']} | {r['worker_mb']} | {peer_cells} |")
    for who in ("nano360", "datatrove"):
        for stage in sorted({r["stage"] for r in rows if r["who"] == who}):
            got = {r["scale"]: r["worker_mb"] for r in rows if r["who"] == who and r["stage"] == stage}
            lo, hi = min(got), max(got)
            if hi > lo and got[lo] > 0:
                print(f"{who} {stage}: peak RSS per worker {hi}x / {lo}x = {got[hi] / got[lo]:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scales", default="1,4,16")
    ap.add_argument("--peer_scales", default="1,4")
    ap.add_argument("--speedup_scale", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each worker count for the speed-up")
    ap.add_argument("--work", default="/tmp/curate_bench")
    ap.add_argument("--peer", default="/work/peers/venv/bin/python", help="datatrove's venv python")
    ap.add_argument("--json", default=None, help="also write every figure to this file")
    args = ap.parse_args()
    raw = os.path.join(ROOT, "data", "demo", "raw")
    if not os.path.isdir(raw):
        raise SystemExit(f"{raw} is missing: python curate.py fetch-demo")
    python = args.peer if os.path.exists(args.peer) else None
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    print(f"# curate_bench {datetime.date.today()} · {platform.processor() or platform.machine()} · {os.cpu_count()} "
          f"cores · python {platform.python_version()} · datatrove: {'yes' if python else 'no (' + args.peer + ' missing)'}\n")
    scales = [int(x) for x in args.scales.split(",")]
    rows, tokenizer, tj = [], None, None
    for k in scales:
        r, d, en = pipeline_at(args.work, k, raw, raw, tokenizer)
        rows += r
        tokenizer = tokenizer or f"{d}/tok.tiktoken"  # one BPE for every scale's tokenize
        if python and k in [int(x) for x in args.peer_scales.split(",")]:
            tj = tj or export_tokenizer_json(tokenizer, os.path.join(args.work, "tokenizer_json"))
            rows += datatrove_at(python, args.work, k, d, en, tj)
        print(f"scale {k}x done", file=sys.stderr)
        json.dump(rows, open(os.path.join(args.work, "rows.json"), "w"), indent=1)  # (a crash later loses nothing)
    print("## stages\n")
    table(rows, scales)
    print(f"\n## 1 worker against 2 ({args.speedup_scale}x, the best of {args.repeat} runs each)\n\n"
          "| stage | 1 worker s | 2 workers s | speed-up |\n|---|--:|--:|--:|")
    best = {}
    for r in range(args.repeat):  # alternately, so that a slow spell of this shared machine hits both
        for w in (1, 2):
            got, d, en = pipeline_at(args.work, args.speedup_scale, raw, raw, tokenizer, workers=w, suffix=f"_w{w}_{r}")
            shutil.rmtree(d)
            shutil.rmtree(os.path.dirname(en))
            for x in got:
                best[x["stage"], w] = min(best.get((x["stage"], w), 1e9), x["seconds"])
    one = [dict(stage=stage, one=best[stage, 1], two=best[stage, 2]) for stage, w in best if w == 1]
    for x in one:
        note = " (1 worker: tiktoken on 2 threads)" if x["stage"] == "tokenize" else ""
        print(f"| {x['stage']}{note} | {x['one']} | {x['two']} | {x['one'] / x['two']:.2f}x |")
    rec = recall(python, args.work)
    import helpers as T
    print("\n## near-duplicate recall (planted edits, tests/helpers.py)\n")
    print("| set | originals | tool | " + " | ".join(T.EDITS) + " | false merges |\n|---|--:|---|" + "--:|" * (len(T.EDITS) + 1))
    for r in rec:
        print(f"| {r['set']} | {r['originals']} | {r['who']} | " + " | ".join(f"{r['recall'][e]:.2f}" for e in T.EDITS)
              + f" | {r['false_merges']} |")
    s = startup()
    print(f"\n## start-up\n\n`import curate` loads torch: {s['imports_torch']}; import {s['import_seconds']} s; "
          f"`python curate.py` (its usage) {s['command_seconds']} s")
    if args.json:
        json.dump(dict(rows=rows, speedup=one, recall=rec, startup=s), open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
