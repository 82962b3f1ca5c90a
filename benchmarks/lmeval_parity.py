"""
Parity with lm-evaluation-harness: the same model (a checkpoint, exported to Hugging Face
Llama) and the same items in all six formats, built from real text (data/tiny), scored by
eval.py and by lm-eval's own task configs (pointed at these files), 0-shot and k-shot.
Compares per request: the context and continuation strings, the log-likelihoods, and per item
the acc / acc_norm predictions; then times both on the same items.

    python benchmarks/lmeval_parity.py CKPT [--python /work/peers/lmeval/bin/python] [--shots 2] [--out DIR] [--ours hf]

--ours hf: nano360 scores the exported Hugging Face folder (eval.py's path for a released
model, its tokenizer.json included) instead of the checkpoint.

lm-eval is not a dependency of nano360: it runs in its own environment (pip install lm-eval),
as a subprocess of this script (the --lmeval-side mode below).
"""
import argparse, json, os, random, re, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

N_ITEMS, N_SHOTS_POOL = 20, 12
BATCH_SIZES = (16, 64)


# -----------------------------------------------------------------------------
# items from real text: sentences of data/tiny's English chapters and Chinese classics

def sentences(lang):
    text = " ".join(json.loads(l)["text"] for l in open(os.path.join(HERE, "..", "data", "tiny", f"{lang}.jsonl")))
    if lang == "en":
        parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
        return [p for p in parts if 8 <= len(p.split()) <= 30]
    parts = re.split(r"(?<=[。！？])", text.replace("\n", ""))
    return [p for p in parts if 8 <= len(p) <= 40]


def build(folder, seed=0):
    """hellaswag, arc_easy, arc_challenge, mmlu, ceval, cmmlu: N_ITEMS items each, and their shot files."""
    rnd = random.Random(seed)
    en, zh = sentences("en"), sentences("zh")
    rnd.shuffle(en), rnd.shuffle(zh)
    pos = {"en": 0, "zh": 0}

    def take(lang, n=1):
        src = en if lang == "en" else zh
        out = src[pos[lang]:pos[lang] + n]
        pos[lang] += n
        return out

    def hellaswag(i):
        s, *others = take("en", 4)
        w = s.split()
        cut = len(w) // 2
        label = ["Reading", "Stories", "Home and Garden"][i % 3]
        ctx_a = ("[header] " if i % 4 == 0 else "") + " ".join(w[:cut - 2]) + (" [title]" if i % 5 == 0 else "")
        endings = [" ".join(w[cut:])] + [" ".join(o.split()[len(o.split()) // 2:]) for o in others]
        gold = i % 4
        endings[0], endings[gold] = endings[gold], endings[0]
        return {"activity_label": label, "ctx_a": ctx_a, "ctx_b": " ".join(w[cut - 2:cut]).lower(), "ctx": "",
                "endings": endings, "label": str(gold)}

    def arc(i):
        s, *others = take("en", 4)
        w = s.split()
        choices = [w[-1]] + [o.split()[-1] for o in others]
        gold = i % 4
        choices[0], choices[gold] = choices[gold], choices[0]
        labels = ["A", "B", "C", "D"] if i % 3 else ["1", "2", "3", "4"]
        return {"id": f"p{i}", "question": " ".join(w[:-1]) + " ... which word ends it?",
                "choices": {"text": choices, "label": labels}, "answerKey": labels[gold]}

    def mmlu(i):
        s, *others = take("en", 4)
        choices = [" ".join(x.split()[:5]) for x in [s] + others]
        gold = i % 4
        choices[0], choices[gold] = choices[gold], choices[0]
        return {"question": f"Which words open the sentence that goes on: '{' '.join(s.split()[5:])}'?",
                "choices": choices, "answer": gold, "subject": "world_literature"}

    def chinese(i, qk, ak, subject):
        s, *others = take("zh", 4)
        opts = [x[-6:] for x in [s] + others]
        gold = i % 4
        opts[0], opts[gold] = opts[gold], opts[0]
        return {qk: f"“{s[:-6]}”的下文是什么？", "A": opts[0], "B": opts[1], "C": opts[2], "D": opts[3],
                ak: "ABCD"[gold], "subject": subject}

    makers = dict(hellaswag=(hellaswag, "train"), arc_easy=(arc, "train"), arc_challenge=(arc, "train"),
                  mmlu=(mmlu, "dev"), ceval=(lambda i: chinese(i, "question", "answer", "中国语言文学"), "dev"),
                  cmmlu=(lambda i: chinese(i, "Question", "Answer", "中国古代文学"), "dev"))
    os.makedirs(folder, exist_ok=True)
    for task, (make, split) in makers.items():
        for name, n in ((f"{task}.jsonl", N_ITEMS), (f"{task}.{split}.jsonl", N_SHOTS_POOL)):
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                for i in range(n):
                    f.write(json.dumps(make(i), ensure_ascii=False) + "\n")


# -----------------------------------------------------------------------------
# lm-eval's side: its task configs, pointed at our files (run in lm-eval's environment)

YAML = {  # task: (lm-eval config to include, our split name -> lm-eval split key, extra lines)
    "hellaswag": ("hellaswag/hellaswag.yaml", {"train": "train", "test": "validation"}, ""),
    "arc_easy": ("arc/arc_easy.yaml", {"train": "train", "test": "test"}, ""),
    "arc_challenge": ("arc/arc_easy.yaml", {"train": "train", "test": "test"}, ""),
    "mmlu": ("mmlu/default/_default_template_yaml", {"dev": "dev", "test": "test"},
             'description: "The following are multiple choice questions (with answers) about world literature.\\n\\n"\n'),
    "ceval": ("ceval/_default_ceval_yaml", {"dev": "dev", "test": "val"},
              'description: "以下是中国关于中国语言文学的单项选择题，请选出其中的正确答案。\\n\\n"\n'),
    "cmmlu": ("cmmlu/_default_template_yaml", {"dev": "dev", "test": "test"},
              'description: "以下是关于中国古代文学的单项选择题，请直接给出正确答案的选项。\\n\\n"\n'),
}


def lmeval_side(items_dir, hf_dir, shots, out):
    import lm_eval
    from lm_eval.tasks import TaskManager
    tasks_root = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    conf = os.path.join(out, "lmeval_tasks")
    os.makedirs(conf, exist_ok=True)
    for task, (inc, splits, extra) in YAML.items():
        shot_split = "dev" if "dev" in splits else "train"
        files = {v: os.path.join(items_dir, f"{task}.jsonl" if k == "test" else f"{task}.{shot_split}.jsonl")
                 for k, v in splits.items()}
        with open(os.path.join(conf, f"parity_{task}.yaml"), "w", encoding="utf-8") as f:
            f.write(f"include: {os.path.join(tasks_root, inc)}\ntask: parity_{task}\ntag: []\ndataset_path: json\n"
                    f"dataset_name: null\ndataset_kwargs:\n  data_files:\n" +
                    "".join(f"    {k}: {v}\n" for k, v in files.items()) + extra)
    from lm_eval.models.huggingface import HFLM
    tm = TaskManager(include_path=conf)
    result = {}
    for k in (0, shots):
        secs = {}
        for bs in BATCH_SIZES:  # the model loaded once per batch size, outside the timing
            lm = HFLM(pretrained=hf_dir, dtype="float32", batch_size=bs, device="cpu")
            t = time.perf_counter()
            res = lm_eval.simple_evaluate(model=lm, tasks=[f"parity_{t}" for t in YAML], num_fewshot=k,
                                          log_samples=True, task_manager=tm, fewshot_random_seed=1234)
            secs[bs] = time.perf_counter() - t
        result[k] = dict(seconds=secs, version=lm_eval.__version__, tasks={
            task[len("parity_"):]: [dict(doc_id=s["doc_id"], args=[list(a) for a in s["arguments"]],
                                          ll=[r[0][0] for r in s["resps"]], acc=s.get("acc"), acc_norm=s.get("acc_norm"))
                                     for s in sorted(samples, key=lambda s: s["doc_id"])]
            for task, samples in res["samples"].items()})
    json.dump(result, open(os.path.join(out, "lmeval.json"), "w"), ensure_ascii=False)


# -----------------------------------------------------------------------------
# ours, and the comparison

def our_side(ckpt, items_dir, shots):
    import numpy as np
    import torch
    import eval as ev
    import tasks
    torch.set_num_threads(os.cpu_count())
    model, cfg, enc, meta = ev.load(ckpt, "cpu")
    out = {}
    for k in (0, shots):
        secs = {}
        for bs in BATCH_SIZES:
            t = time.perf_counter()
            scored = {}
            for task in tasks.TASKS:
                path = os.path.join(items_dir, f"{task}.jsonl")
                items = tasks.read_task(path)
                reqs, args = [], []
                for context, item in zip(tasks.contexts(path, items, k), items):
                    for c in item.choices:
                        args.append([context, " " + c])
                        reqs.append(tasks.encode_pair(enc, context, " " + c))
                ll = tasks.loglikelihoods(model, reqs, bs)
                rows, a = [], 0
                for i, item in enumerate(items):
                    n = len(item.choices)
                    s = ll[a:a + n]
                    norm = [v / len(c) for v, c in zip(s, item.choices)]
                    rows.append(dict(doc_id=i, args=args[a:a + n], ll=s, acc=float(np.argmax(s) == item.gold),
                                     acc_norm=float(np.argmax(norm) == item.gold)))
                    a += n
                scored[task] = rows
            secs[bs] = time.perf_counter() - t
        out[k] = dict(seconds=secs, tasks=scored)
    return out


def compare(ours, theirs, shots):
    lines = ["| task | shots | items | requests | prompts identical | max abs log-lik. gap | acc same | acc_norm same "
             "| acc ours / lm-eval |", "|---|---|---|---|---|---|---|---|---|"]
    worst = 0.0
    for k in (0, shots):
        for task, rows in ours[str(k)]["tasks"].items():
            them = theirs[str(k)]["tasks"][task]
            same_args = sum(a == b for r, t in zip(rows, them) for a, b in zip(r["args"], t["args"]))
            nreq = sum(len(r["args"]) for r in rows)
            gap = max(abs(a - b) for r, t in zip(rows, them) for a, b in zip(r["ll"], t["ll"]))
            worst = max(worst, gap)
            acc = sum(r["acc"] == t["acc"] for r, t in zip(rows, them))
            accn = sum(r["acc_norm"] == t["acc_norm"] for r, t in zip(rows, them))
            accn = f"{accn}/{len(rows)}" if them[0]["acc_norm"] is not None else "(lm-eval: acc only)"
            mean = lambda rs, key: sum(r[key] for r in rs) / len(rs)
            lines.append(f"| {task} | {k} | {len(rows)} | {nreq} | {same_args}/{nreq} | {gap:.2e} | {acc}/{len(rows)} | "
                         f"{accn} | {mean(rows, 'acc'):.3f} / {mean(them, 'acc'):.3f} |")
    return lines, worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt", nargs="?")
    ap.add_argument("--python", default="/work/peers/lmeval/bin/python")
    ap.add_argument("--shots", type=int, default=2)
    ap.add_argument("--out", default="/tmp/lmeval_parity")
    ap.add_argument("--lmeval-side", nargs=2, metavar=("ITEMS", "HF_DIR"))
    ap.add_argument("--ours", choices=("ckpt", "hf"), default="ckpt", help="what nano360 scores: the checkpoint or its export")
    args = ap.parse_args()
    if args.lmeval_side:
        return lmeval_side(*args.lmeval_side, args.shots, args.out)
    items, hf = os.path.join(args.out, "items"), os.path.join(args.out, "hf")
    build(items)
    subprocess.run([sys.executable, os.path.join(HERE, "..", "eval.py"), "export", args.ckpt, hf], check=True)
    t = time.perf_counter()
    subprocess.run([args.python, __file__, "--lmeval-side", items, hf, "--shots", str(args.shots), "--out", args.out], check=True)
    print(f"lm-eval side: {time.perf_counter() - t:.1f} s in all (environment start included)")
    ours = json.loads(json.dumps(our_side(args.ckpt if args.ours == "ckpt" else hf, items, args.shots)))
    theirs = json.load(open(os.path.join(args.out, "lmeval.json")))
    lines, worst = compare(ours, theirs, args.shots)
    print(f"lm-eval {theirs['0']['version']}; checkpoint {args.ckpt} (nano360 scores {'it' if args.ours == 'ckpt' else hf}); CPU threads {os.cpu_count()} in both; "
          f"{time.strftime('%Y-%m-%d')}")
    print("\n".join(lines))
    print(f"\nlargest log-likelihood gap: {worst:.2e} nats")
    print("\n| shots | batch size | nano360 (s) | lm-eval (s) | lm-eval / nano360 |\n|---|---|---|---|---|")
    for k in (0, args.shots):
        for bs in BATCH_SIZES:
            a, b = ours[str(k)]["seconds"][str(bs)], theirs[str(k)]["seconds"][str(bs)]
            print(f"| {k} | {bs} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
        a, b = min(ours[str(k)]["seconds"].values()), min(theirs[str(k)]["seconds"].values())
        print(f"| {k} | best of each | {a:.2f} | {b:.2f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
