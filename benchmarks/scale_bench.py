"""Dedup at scale, measured at 3 sizes and extrapolated to 1B, 10B and 50B documents: memory per
worker and CPU time of every phase, which limit breaks first, and the one-process clusters phase
that the sharded star steps replaced.

    python benchmarks/scale_bench.py [--scales 1,4,16] [--near 0.3] [--work /tmp/scale_bench]

Needs the demo corpus (`python curate.py fetch-demo`). At scale k each of its 4,140 documents
gives k variants (the original, and k-1 copies with half their words, or two thirds of their CJK
characters, replaced: distinct documents of the same text statistics), and each variant has a
near-duplicate (2% of its words replaced) with the probability that makes --near of all documents
near-duplicates; the documents are shuffled, so a cluster's members lie anywhere in the input.

Each size runs `dedup.dedup_corpus` in a fresh process with one worker (the tasks in that process)
and partitions small enough for a terabyte corpus's shape at this size: PART_BYTES 4 MB (so
17-246 partitions) and PART_RECORDS 2^15 (a partition read in several ranges). Before each phase
the process's peak RSS is reset (/proc/self/clear_refs, 5) and read after it (VmHWM): the peak
of that phase alone; CPU seconds from time.process_time. Before the first star step it also runs
what the clusters phase did before it was sharded, one union of every agreeing pair in one
process (dedup.roots), and measures it the same way.

A second table measures, in a fresh process each, what one partition task holds at the real
PART_RECORDS (2^21): the largest range of records a phase sorts at once. The extrapolation
takes CPU seconds per document and pairs per document from the largest size, bytes per document
from the corpus, shard_mb=256 input tasks, and MAX_PARTS.
"""
import argparse, datetime, json, os, platform, random, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

MEASURE = r"""
import gc, json, os, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import dedup, executor
dedup.PART_BYTES, dedup.PART_RECORDS = {part_bytes}, {part_records}


def hwm_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024


def reset():
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


phases, run = {{}}, executor.Stage.run


def measured(st, phase, n, fn, *args):
    if phase == "large0":  # the clusters phase before it was sharded: every pair in one process
        reset()
        t0 = time.process_time()
        bands = dedup.DEDUP["bands"]
        n_part = n
        pairs = [np.array(a[a[:, 0] < a[:, 1]]) for a in dedup._each(st, "buckets", range(n_part * bands), "edges")]
        pairs = np.unique(np.concatenate(pairs + [np.zeros((0, 2), np.uint64)]), axis=0)
        nodes, root = dedup.roots(pairs)
        phases["one-process clusters"] = dict(mb=hwm_mb(), cpu=time.process_time() - t0, tasks=1, pairs=len(pairs))
        del pairs, nodes, root
    reset()
    t0 = time.process_time()
    run(st, phase, n, fn, *args)
    phases[phase] = dict(mb=hwm_mb(), cpu=time.process_time() - t0, tasks=n)


executor.Stage.run = measured
t0 = time.time()
report = dedup.dedup_corpus(sys.argv[1], sys.argv[2], shard_mb=16, workers=1)
print(json.dumps(dict(phases=phases, seconds=time.time() - t0, partitions=report["partitions"],
                      clusters=report["clusters"])))
"""

HOLD = r"""
import json, os, sys, tempfile, time
sys.path.insert(0, {root!r})
import numpy as np
import dedup
n, what = 1 << 21, sys.argv[1]
rng = np.random.default_rng(0)
out = tempfile.mkdtemp()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
t0 = time.process_time()
if what == "copies":  # (key_hi, key_lo, doc) -> (copy, original), sorted
    rec = rng.integers(0, 1 << 40, (n, 3), dtype=np.uint64)
    c = dedup.first_pairs(rec[:, :2], rec[:, 2])[:, ::-1]
    np.save(os.path.join(out, "c.npy"), c[np.argsort(c[:, 0])])
elif what == "buckets":  # (band hash, doc) -> candidate pairs, as edges both ways
    rec = np.c_[rng.integers(0, n // 2, n, dtype=np.uint64), np.arange(n, dtype=np.uint64)]
    p = dedup.first_pairs(rec[:, :1], rec[:, 1])
    e = np.r_[p, p[:, ::-1]]
    dedup._save_parts(out, "e", e, e[:, 0] % np.uint64(256), 256)
elif what == "star steps":  # a range of edges: unique, one step, saved by partition
    e = rng.integers(0, n, (n, 2), dtype=np.uint64)
    e, _ = dedup.star_step(dedup._unique_rows(e), True)
    dedup._save_parts(out, "e", e, e[:, 0] % np.uint64(256), 256)
elif what == "paragraphs":  # (doc, key_hi, key_lo) -> the repeats
    rec = np.c_[np.arange(n, dtype=np.uint64), rng.integers(0, n // 2, (n, 2), dtype=np.uint64)]
    np.save(os.path.join(out, "d.npy"), dedup.paragraph_drops(rec))
elif what == "one-process clusters":  # 2^22 agreeing pairs of 1.5 x 2^22 documents: all at once
    p = np.sort(rng.integers(0, 3 * n, (2 * n, 2), dtype=np.uint64), axis=1)
    nodes, root = dedup.roots(np.unique(p[p[:, 0] < p[:, 1]], axis=0))
elif what == "reading a file":  # what a task pays to read a slice of one file it maps, a thousand times
    np.save(os.path.join(out, "r.npy"), np.zeros((1000, 2), np.uint64))
    for _ in range(1000):
        x = np.array(np.load(os.path.join(out, "r.npy"), mmap_mode="r")[3:40])
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024,
      time.process_time() - t0)
"""


def corpus(src, dest, k, near, seed=0):
    """dest: the demo corpus at scale k (see the top), in files of about 16 MB; (docs, bytes)."""
    from helpers import edit_words, is_cjk
    if os.path.isfile(os.path.join(dest, "DONE")):
        return json.load(open(os.path.join(dest, "DONE")))
    os.makedirs(dest, exist_ok=True)
    base = [json.loads(l) for f in sorted(os.listdir(src)) if f.endswith(".jsonl")
            for l in open(os.path.join(src, f), encoding="utf-8")]
    rng = random.Random(seed)
    vocab = dict(en=[w for d in base[:300] for w in d["text"].split(" ")][:20000],
                 zh=[c for d in base if d["source"].startswith("zh") for c in d["text"] if is_cjk(c)][:20000])
    p = near / (1 - near)  # near-duplicates per variant: near of all documents
    docs = []
    for d in base:
        lang = "zh" if d["source"].startswith("zh") else "en"
        for v in range(k):
            text = d["text"] if v == 0 else edit_words(d["text"], lang, 0.5, rng, vocab[lang])
            docs.append({**d, "id": f"{d['id']}/{v}", "text": text})
            if rng.random() < p:
                docs.append({**d, "id": f"{d['id']}/{v}n", "text": edit_words(text, lang, 0.02, rng, vocab[lang])})
    rng.shuffle(docs)
    f, size, n = None, 0, 0
    for d in docs:
        if f is None or f.tell() > 16 << 20:
            f = open(os.path.join(dest, f"{n:05d}.jsonl"), "w", encoding="utf-8")
            n += 1
        f.write(json.dumps(d, ensure_ascii=False) + "\n")
        size += len(d["text"].encode())
    f.close()
    json.dump(dict(docs=len(docs), bytes=size), open(os.path.join(dest, "DONE"), "w"))
    return dict(docs=len(docs), bytes=size)


def kind(phase):
    return "star steps" if phase.startswith(("large", "small")) else phase


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="1,4,16")
    ap.add_argument("--near", type=float, default=0.3)
    ap.add_argument("--work", default="/tmp/scale_bench")
    ap.add_argument("--again", action="store_true", help="the tables from the last run's dedup figures")
    a = ap.parse_args()
    import dedup
    print(f"# dedup at scale: {datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; `python benchmarks/scale_bench.py --scales {a.scales} --near {a.near}`\n")
    rows = json.load(open(os.path.join(a.work, "scale.json")))["rows"] if a.again else []
    for k in [] if a.again else map(int, a.scales.split(",")):
        src = os.path.join(a.work, f"x{k}")
        info = corpus(os.path.join(ROOT, "data", "demo", "clean"), src, k, a.near)
        out = os.path.join(a.work, f"x{k}_dedup")
        subprocess.run(["rm", "-rf", out, out.rstrip("/") + ".tmp"], check=True)  # ours, from the last run
        code = MEASURE.format(root=ROOT, part_bytes=4 << 20, part_records=1 << 15)
        r = subprocess.run([sys.executable, "-c", code, src, out], cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stdout[-2000:] + r.stderr[-3000:])
        m = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(dict(k=k, **info, **m))
        print(f"x{k}: {info['docs']} documents, {info['bytes'] / 1e6:.0f} MB, {m['partitions']} partitions, "
              f"{m['clusters']} clusters, {m['seconds']:.0f} s", file=sys.stderr)
    # table 1: per phase, measured
    names = []
    for r in rows:
        for ph in r["phases"]:
            if kind(ph) not in names:
                names.append(kind(ph))
    names.remove("one-process clusters")
    names.append("one-process clusters")
    print("| phase | " + " | ".join(f"x{r['k']}: peak MB | CPU s" for r in rows) + " | tasks at the largest |")
    print("|---|" + "---|---|" * len(rows) + "---|")
    agg = []
    for r in rows:
        g = {}
        for ph, v in r["phases"].items():
            x = g.setdefault(kind(ph), dict(mb=0, cpu=0, tasks=0, steps=0))
            x["mb"], x["cpu"] = max(x["mb"], v["mb"]), x["cpu"] + v["cpu"]
            x["tasks"], x["steps"] = max(x["tasks"], v["tasks"]), x["steps"] + 1
            x["pairs"] = v.get("pairs", x.get("pairs"))
        agg.append(g)
    for name in names:
        cells = " | ".join(f"{g[name]['mb']:.0f} | {g[name]['cpu']:.1f}" for g in agg)
        last = agg[-1][name]
        steps = f" x {last['steps']} steps" if name == "star steps" else ""
        print(f"| {name} | {cells} | {last['tasks']}{steps} |")
    print("\n| size | documents | MB | partitions | near-dup clusters | agreeing pairs | star steps | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r, g in zip(rows, agg):
        print(f"| x{r['k']} | {r['docs']} | {r['bytes'] / 1e6:.0f} | {r['partitions']} | {r['clusters']} | "
              f"{g['one-process clusters']['pairs']} | {g['star steps']['steps']} | {r['seconds']:.0f} |")
    # table 2: what a partition task holds at the real PART_RECORDS; the one-process union
    hold = {}
    for what in ("nothing", "copies", "buckets", "star steps", "paragraphs",
                 "one-process clusters", "reading a file"):
        r = subprocess.run([sys.executable, "-c", HOLD.format(root=ROOT), what], cwd=ROOT, capture_output=True,
                           text=True)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        hold[what] = [float(x) for x in r.stdout.split()]
    base, read_s = hold["nothing"][0], hold["reading a file"][1] / 1000
    per_pair = (hold["one-process clusters"][0] - base) * 2**20 / (1 << 22)
    print("\nOne range at the real PART_RECORDS (2^21 records): the most a partition task sorts at once; "
          "and the one-process union of 2^22 pairs. A fresh process each; the interpreter with numpy alone "
          f"peaks at {base:.0f} MB; reading a slice of a mapped file costs {read_s * 1e6:.0f} CPU-us.\n")
    print("| what | peak MB | CPU s |\n|---|---|---|")
    for what in ("copies", "buckets", "star steps", "paragraphs", "one-process clusters"):
        print(f"| {what} | {hold[what][0]:.0f} | {hold[what][1]:.2f} |")
    # table 3: extrapolated (a model: each term named in the heading)
    big, g = rows[-1], agg[-1]
    per_doc_bytes = big["bytes"] / big["docs"]
    pairs_per_doc = g["one-process clusters"]["pairs"] / big["docs"]
    per_doc = sum(g[x]["cpu"] for x in ("signatures", "keys", "filter")) / big["docs"]
    rec_s = hold["buckets"][1] / (1 << 21)
    edge_s = hold["star steps"][1] / (1 << 21)
    steps = g["star steps"]["steps"]
    bands = dedup.DEDUP["bands"]
    print(f"\nExtrapolated from x{big['k']} and the table above: {per_doc_bytes:.0f} bytes a document; "
          f"{pairs_per_doc:.3f} agreeing pairs a document ({a.near:.0%} near-duplicates); the one-process union "
          f"at {per_pair:.0f} bytes a pair; signatures, keys and filter at {per_doc * 1e3:.2f} CPU-ms a document; a "
          f"bucket task at {rec_s * 1e6:.2f} CPU-us a record and a star step at {edge_s * 1e6:.2f} an edge, plus "
          f"{read_s * 1e6:.0f} us for each file read (per range: every input task's file and every copies file for "
          f"a bucket task, every file of the step before for a star step; a signature lookup for each document of "
          f"an agreeing pair); "
          f"{steps} star steps; input tasks of 256 MB; partitions min(cap, input / 1 GB), the cap 256 (before this table) or MAX_PARTS={dedup.MAX_PARTS}; "
          "local disk (a shared filesystem's metadata calls cost more).\n")
    print("| documents | input TB | input tasks | partitions | one-process clusters GB | a bucket task: records "
          "| file reads | hours | a star step: edges | file reads | hours | CPU-hours, all phases |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, cap in [(n, cap) for cap in (256, dedup.MAX_PARTS) for n in (1e9, 1e10, 5e10)]:
        size = n * per_doc_bytes
        tasks = size / (256 << 20)
        parts = min(cap, max(1, size / (1 << 30)))
        rec = n / parts  # each document in one partition of each band
        ranges = -(-rec // (1 << 21))
        reads = tasks * (ranges + 1) + ranges * parts * ranges + 2 * pairs_per_doc * rec  # + copies files
        bucket_s = rec * rec_s + reads * read_s
        edges = 2 * pairs_per_doc * n / parts
        e_ranges = -(-edges // (1 << 21))
        e_reads = parts * e_ranges * (e_ranges + 1)
        star_s = edges * edge_s + e_reads * read_s
        total = (n * per_doc + parts * (1 + bands) * bucket_s + steps * parts * star_s  # (copies ~ buckets)
                 + tasks * 3 * parts * read_s) / 3600  # a filter task reads every partition's decisions
        gb = (base + per_pair / 2**20 * pairs_per_doc * n) / 1024
        print(f"| {n:.0e} | {size / 1e12:.0f} | {tasks:,.0f} | {parts:.0f} | {gb:,.0f} | {rec:,.0f} | {reads:,.0f} | "
              f"{bucket_s / 3600:.2f} | {edges:,.0f} | {e_reads:,.0f} | {star_s / 3600:.2f} | {total:,.0f} |")
    json.dump(dict(rows=rows, hold=hold), open(os.path.join(a.work, "scale.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
