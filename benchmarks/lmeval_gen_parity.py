"""
Parity of the generative tasks (gentasks.py) with lm-evaluation-harness: GSM8K, HumanEval and
MBPP items built from real text (data/tiny), the same model (a checkpoint, exported to Hugging
Face Llama) scored by nano360 and by lm-eval's own task configs (gsm8k.yaml, humaneval.yaml,
mbpp.yaml, pointed at these files), greedy, at 0 shots and at the tasks' shots. Compares per
item: the prompt, the generation, GSM8K's strict and flexible answers and exact match, and
whether each program passed; then the same planted completions (right and wrong) through both
code runners (our sandbox, evaluate's code_eval that lm-eval calls); then times generation on
both sides, best of --repeats, alternating.

    python benchmarks/lmeval_gen_parity.py CKPT [--python /work/peers/lmeval/bin/python]
        [--code_eval /work/peers/code_eval] [--max_gen_toks 48] [--out DIR] [--ours hf]

lm-eval is not a dependency of nano360: it runs in its own environment (pip install lm-eval
evaluate), as a subprocess of this script. Its HumanEval and MBPP load evaluate's code_eval
metric, from the Hub or from a folder code_eval/ in the working folder: --code_eval is that
folder (metrics/code_eval of github.com/huggingface/evaluate), the subprocess runs beside it.
"""
import argparse, json, os, random, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

N_ITEMS, N_POOL, BATCH = 12, 8, 16
SHOTS = dict(gsm8k=(0, 5), humaneval=(0,), mbpp=(0, 3))


def build(folder, seed=0):
    """Each task's items (N_ITEMS; GSM8K's shots N_POOL more) in its Hugging Face export format,
    and a right and a wrong completion of each code item (for the runners' comparison)."""
    from lmeval_parity import sentences  # the same sentences as the multiple-choice items
    rnd, text = random.Random(seed), sentences("en")
    rnd.shuffle(text)
    it = iter(text)
    os.makedirs(folder, exist_ok=True)

    def gsm8k(i):
        s = next(it)
        n = len(s.split()) * (1000 if i % 3 == 0 else 1)  # thousands: the answers' commas
        return {"question": f"{s} How many words, times {1000 if i % 3 == 0 else 1}?",
                "answer": f"It has {len(s.split())} words.\nSo {n} = <<{n}={n}>>{n}.\n#### {n:,}"}

    def humaneval(i):
        return {"task_id": f"parity/{i}", "prompt": f'def f{i}(x):\n    """{next(it)}\n    >>> f{i}(1)\n    {i + 1}\n    """\n',
                "canonical_solution": f"    return x + {i}\n", "entry_point": f"f{i}",
                "test": f"\n\ndef check(candidate):\n    assert candidate(1) == {i + 1}\n    assert candidate(-{i}) == 0\n"}

    def mbpp(i):
        return {"task_id": 100 + i, "text": f"Write a function to add {i} to a number. {next(it)}",
                "code": f"def add_{i}(n):\r\n  return n + {i}", "test_setup_code": "", "challenge_test_list": [],
                "test_list": [f"assert add_{i}({a}) == {a + i}" for a in (1, 2, 30)]}

    rows = dict(gsm8k=[gsm8k(i) for i in range(N_ITEMS + N_POOL)], humaneval=[humaneval(i) for i in range(N_ITEMS)],
                mbpp=[mbpp(i) for i in range(N_ITEMS)])
    files = {"gsm8k.jsonl": rows["gsm8k"][:N_ITEMS], "gsm8k.train.jsonl": rows["gsm8k"][N_ITEMS:],
             "humaneval.jsonl": rows["humaneval"], "mbpp.jsonl": rows["mbpp"]}
    for name, docs in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    # planted completions: right for even items, wrong (or a crash) for odd ones
    planted = {"humaneval": [d["canonical_solution"] if i % 2 == 0 else ["    return x\n", "    return 1 / 0\n"][i % 4 // 2]
                             for i, d in enumerate(rows["humaneval"])],
               "mbpp": [d["code"] if i % 2 == 0 else d["code"].replace("+", "-") for i, d in enumerate(rows["mbpp"])]}
    json.dump(planted, open(os.path.join(folder, "planted.json"), "w"))


# -----------------------------------------------------------------------------
# lm-eval's side: its task configs, pointed at our files (run in lm-eval's environment)

YAML = dict(gsm8k=("gsm8k/gsm8k.yaml", {"train": "gsm8k.train.jsonl", "test": "gsm8k.jsonl"}),
            humaneval=("humaneval/humaneval.yaml", {"test": "humaneval.jsonl"}),
            mbpp=("mbpp/mbpp.yaml", {"test": "mbpp.jsonl"}))


# what a logged sample holds besides its metrics' values
SAMPLE_KEYS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics",
               "doc_hash", "prompt_hash", "target_hash"}


def lmeval_side(items_dir, hf_dir, max_gen_toks, repeats):
    reply = os.fdopen(os.dup(1), "w")  # our answers; lm-eval's own prints go to stderr, the log
    os.dup2(2, 1)
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    import torch, transformers, lm_eval
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    root, conf = os.path.join(os.path.dirname(lm_eval.__file__), "tasks"), os.path.join(items_dir, "..", "lmeval_gen_tasks")
    os.makedirs(conf, exist_ok=True)
    for task, (config, files) in YAML.items():  # every key of lm-eval's config kept but the dataset's
        with open(os.path.join(conf, f"parity_{task}.yaml"), "w", encoding="utf-8") as f:
            f.write(f"include: {os.path.join(root, config)}\ntask: parity_{task}\ntag: []\ndataset_path: json\n"
                    "dataset_name: null\ndataset_kwargs:\n  data_files:\n"
                    + "".join(f"    {k}: {os.path.join(items_dir, v)}\n" for k, v in files.items()))
    tm = TaskManager(include_path=conf)
    lm = HFLM(pretrained=hf_dir, dtype="float32", batch_size=BATCH, device="cpu")
    spent = [0.0]  # seconds in the backend's generate_until: the generation alone, as ours is timed
    generate = lm.generate_until

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return generate(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start
    lm.generate_until = timed
    out = dict(threads=torch.get_num_threads(), max_length=lm.max_length,
               versions=f"lm-eval {lm_eval.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    for task, shots in ((t, s) for t, ss in SHOTS.items() for s in ss):
        loaded = tm.load([f"parity_{task}"])
        for t in loaded["tasks"].values():
            t.set_config(key="num_fewshot", value=shots)
            t.set_config(key="generation_kwargs", value=dict(max_gen_toks=max_gen_toks), update=True)
        seconds = []
        for _ in range(repeats):
            for t in loaded["tasks"].values():
                t.set_fewshot_seed(seed=1234)  # each run draws the same shots, as a fresh one does
            spent[0] = 0.0
            res = evaluate(lm=lm, task_dict=loaded, log_samples=True, confirm_run_unsafe_code=True)
            seconds.append(spent[0])
        samples = sorted(res["samples"][f"parity_{task}"], key=lambda s: (s["doc_id"], s.get("filter", "")))
        rows = {}
        for s in samples:  # one entry per item and filter (gsm8k: strict-match, flexible-extract)
            r = rows.setdefault(s["doc_id"], dict(context=s["arguments"][0][0], generation=s["resps"][0][0]))
            r[s.get("filter", "none")] = dict(answer=s["filtered_resps"][0],
                                              metrics={k: v for k, v in s.items() if k not in SAMPLE_KEYS})
        out[f"{task}:{shots}"] = dict(rows=[rows[i] for i in sorted(rows)], seconds=min(seconds), all=seconds,
                                      results=res["results"][f"parity_{task}"])
    # the planted completions through lm-eval's own metric functions (evaluate's code_eval)
    sys.path.insert(0, os.path.join(root, "humaneval"))
    import utils as he
    sys.path[0] = os.path.join(root, "mbpp")
    del sys.modules["utils"]
    import utils as mb
    planted = json.load(open(os.path.join(items_dir, "planted.json")))
    he_docs = [json.loads(l) for l in open(os.path.join(items_dir, "humaneval.jsonl"))]
    mb_docs = [json.loads(l) for l in open(os.path.join(items_dir, "mbpp.jsonl"))]
    out["planted"] = dict(
        humaneval=[he.pass_at_k([f"{d['test']}\ncheck({d['entry_point']})"], [[d["prompt"] + c]], [1])["pass@1"]
                   for d, c in zip(he_docs, planted["humaneval"])],
        mbpp=[mb.pass_at_1(["\n".join(d["test_list"][:3])], [[c]]) for d, c in zip(mb_docs, planted["mbpp"])])
    print(json.dumps(out, ensure_ascii=False, default=float), file=reply, flush=True)


# -----------------------------------------------------------------------------
# ours, then the comparison

def our_side(path, items_dir, max_gen_toks, repeats, threads):
    import torch
    import eval as ev
    import gentasks as G
    torch.set_num_threads(threads)
    model, _, enc, _ = ev.load(ev.checkpoints(path)[-1], "cpu")
    out = dict(threads=torch.get_num_threads())
    for task, shots in ((t, s) for t, ss in SHOTS.items() for s in ss):
        items, prompts = G.gen_prompts(os.path.join(items_dir, f"{task}.jsonl"), shots)
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            texts = G.generate_until(model, enc, prompts, G.UNTIL[task], max_gen_toks, batch_size=BATCH)
            seconds.append(time.perf_counter() - start)
        rows = [dict(context=p, generation=t) for p, t in zip(prompts, texts)]
        if task == "gsm8k":
            for r, item in zip(rows, items):
                for name, regex, group in (("strict-match", G.STRICT, 0), ("flexible-extract", G.FLEXIBLE, -1)):
                    a = G.extract(regex, r["generation"], group)
                    r[name] = dict(answer=a, exact_match=float(G.normalized(a) == G.normalized(item.answer)))
        else:
            runs = G.run_programs([f"{i.prefix}{t}\n{i.tests}" for i, t in zip(items, texts)])
            for r, run in zip(rows, runs):
                r["passed"] = float(run.passed)
        out[f"{task}:{shots}"] = dict(rows=rows, seconds=min(seconds), all=seconds)
    planted = json.load(open(os.path.join(items_dir, "planted.json")))
    out["planted"] = {}
    for task in ("humaneval", "mbpp"):
        items = G.read_gen_task(os.path.join(items_dir, f"{task}.jsonl"))
        runs = G.run_programs([f"{i.prefix}{c}\n{i.tests}" for i, c in zip(items, planted[task])])
        out["planted"][task] = [float(r.passed) for r in runs]
    return out


def compare(ours, theirs):
    print("| task | shots | items | prompts identical | generations identical | answers identical "
          "| per-item score identical | score ours / lm-eval |")
    print("|---|---|---|---|---|---|---|---|")
    worst = []
    for key in (f"{t}:{s}" for t, ss in SHOTS.items() for s in ss):
        task, shots = key.split(":")
        a, b = ours[key]["rows"], theirs[key]["rows"]
        ctx = sum(x["context"] == y["context"] for x, y in zip(a, b))
        gen = sum(x["generation"] == y["generation"] for x, y in zip(a, b))
        if task == "gsm8k":
            ans = sum(x[f]["answer"] == y[f]["answer"] for x, y in zip(a, b) for f in ("strict-match", "flexible-extract"))
            same = sum(x[f]["exact_match"] == y[f]["metrics"]["exact_match"] for x, y in zip(a, b)
                       for f in ("strict-match", "flexible-extract"))
            score = " / ".join(f"{sum(x[f]['exact_match'] for x in a) / len(a):.3f} vs "
                               f"{sum(y[f]['metrics']['exact_match'] for y in b) / len(b):.3f}" for f in ("strict-match", "flexible-extract"))
            answers, per, n2 = f"{ans}/{2 * len(a)}", f"{same}/{2 * len(a)}", 2 * len(a)
        else:
            got = [next(iter(y["create_test" if "create_test" in y else "none"]["metrics"].values())) for y in b]
            same = sum(float(x["passed"]) == float(g) for x, g in zip(a, got))
            score = f"{sum(x['passed'] for x in a) / len(a):.3f} vs {sum(got) / len(b):.3f}"
            answers, per, n2 = "-", f"{same}/{len(a)}", len(a)
        worst += [x for x, y in zip(a, b) if x["generation"] != y["generation"]][:1]
        print(f"| {task} | {shots} | {len(a)} | {ctx}/{len(a)} | {gen}/{len(a)} | {answers} | {per} | {score} |")
        assert len(a) == len(b) and ctx == len(a) and gen == len(a) and per == f"{n2}/{n2}", key
    for task in ("humaneval", "mbpp"):
        x, y = ours["planted"][task], theirs["planted"][task]
        print(f"planted completions, {task}: passed ours {x}, code_eval {[float(v) for v in y]}: "
              f"{'identical' if x == [float(v) for v in y] else 'DIFFERENT'}")
    print("\n| task | shots | nano360 (s) | lm-eval HF backend (s) | lm-eval / nano360 |\n|---|---|---|---|---|")
    for key in ours:
        if ":" in key:
            o, t = ours[key]["seconds"], theirs[key]["seconds"]
            print(f"| {key.split(':')[0]} | {key.split(':')[1]} | {o:.2f} | {t:.2f} | {t / o:.2f} |")
    print("(each side's generation alone: lm-eval's HFLM.generate_until, transformers' generate with its stop "
          "criteria, and gentasks.generate_until; tokenization and decoding included, prompts built and code run not)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt", nargs="?")
    ap.add_argument("--python", default="/work/peers/lmeval/bin/python")
    ap.add_argument("--code_eval", default="/work/peers/code_eval")
    ap.add_argument("--max_gen_toks", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/lmeval_gen_parity")
    ap.add_argument("--ours", choices=("ckpt", "hf"), default="ckpt")
    ap.add_argument("--lmeval-side", nargs=2, metavar=("ITEMS", "HF_DIR"))
    a = ap.parse_args()
    if a.lmeval_side:
        import torch
        torch.set_num_threads(a.threads)
        return lmeval_side(*a.lmeval_side, a.max_gen_toks, a.repeats)
    items, hf = os.path.join(a.out, "items"), os.path.join(a.out, "hf")
    build(items)
    import eval as ev
    ev.main(["export", a.ckpt, hf])
    print(f"{time.strftime('%Y-%m-%d')}, load {os.getloadavg()[0]:.2f}, max_gen_toks {a.max_gen_toks}, batch {BATCH}, "
          f"{N_ITEMS} items per task, best of {a.repeats}")
    log = os.path.join(a.out, "lmeval_side.log")
    t = time.perf_counter()
    p = subprocess.run([a.python, os.path.abspath(__file__), "--lmeval-side", os.path.abspath(items), os.path.abspath(hf),
                        "--max_gen_toks", str(a.max_gen_toks), "--repeats", str(a.repeats), "--threads", str(a.threads)],
                       cwd=os.path.dirname(os.path.abspath(a.code_eval)), stdout=subprocess.PIPE, stderr=open(log, "w"),
                       text=True)
    if p.returncode:
        sys.exit(f"lm-eval's side failed; the end of {log}:\n" + open(log).read()[-3000:])
    theirs = json.loads(p.stdout)
    json.dump(theirs, open(os.path.join(a.out, "lmeval_side.json"), "w"), ensure_ascii=False, indent=1)
    print(f"lm-eval side: {theirs['versions']}, {theirs['threads']} threads, window {theirs['max_length']}, "
          f"{time.perf_counter() - t:.1f} s in all")
    ours = our_side(hf if a.ours == "hf" else a.ckpt, items, a.max_gen_toks, a.repeats, a.threads)
    print(f"nano360 side ({'the exported folder' if a.ours == 'hf' else 'the checkpoint'}): {ours['threads']} threads, "
          f"load {os.getloadavg()[0]:.2f}")
    compare(ours, theirs)


if __name__ == "__main__":
    main()
