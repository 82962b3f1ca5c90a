"""
Parity with lm-evaluation-harness, and speed beside it: one model (a checkpoint, and its export to
Hugging Face Llama) and the same items, in the formats of tasks.py's thirteen multiple-choice tasks,
built from real text (data/tiny), scored by nano360 (tasks.py, in this process) and by lm-eval's
own task configs pointed at these files (a process in lm-eval's environment), at 0 shots, --shots
and the published counts. Compared per request: the context and continuation strings and the
log-likelihoods (within 1e-4 nats); per item the acc / acc_norm predictions, and TruthfulQA MC2's
mass on the true answers (within 1e-6). Then the scoring alone (model loaded, items read) is timed
on both sides, alternating, best of --repeats, ours with its shared few-shot context on and off.

    python benchmarks/lmeval_parity.py CKPT_OR_RUN_DIR [--python /work/peers/lmeval/bin/python]
        [--shots 2] [--repeats 3] [--threads N] [--quiet 0.1] [--out DIR] [--ours hf]

--ours hf: nano360 scores the exported folder (eval.py's path for a released model) instead of the
checkpoint. Exit status 1 where parity fails. lm-eval is no dependency of nano360: it runs in its
own environment, a subprocess of this script (--lmeval-side), its log in OUT/lmeval_side.log.
"""
import argparse, functools, json, os, random, re, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

N_ITEMS, N_POOL = 20, 30  # items per task, and shots to draw from (25-shot ARC takes 25 + 1)
BATCH_SIZES = (16, 64)
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed, and tasks.FEWSHOT_SEED


# -----------------------------------------------------------------------------
# items from real text: sentences of data/tiny's English chapters and Chinese classics

def sentences(lang):
    text = " ".join(json.loads(l)["text"] for l in open(os.path.join(HERE, "..", "data", "tiny", f"{lang}.jsonl")))
    if lang == "en":
        parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
        return [p for p in parts if 8 <= len(p.split()) <= 30 and "_" not in p]  # "_": winogrande's blank
    parts = re.split(r"(?<=[。！？])", text.replace("\n", ""))
    return [p for p in parts if 8 <= len(p) <= 40]


def halves(take, n):
    """n random sentences: the first's two halves, and the second halves of the others."""
    s, *others = take(n)
    w = s.split()
    return " ".join(w[:len(w) // 2]), " ".join(w[len(w) // 2:]), [o.split()[len(o.split()) // 2:] for o in others]


def among(i, right, wrong):  # the right answer goes to position i mod n, so every position gets it
    g = i % (len(wrong) + 1)
    return wrong[:g] + [right] + wrong[g:], g


def make(task, i, take):
    """Item i of a task in its Hugging Face fields, from random sentences (take(n) gives n)."""
    if task == "hellaswag":
        start, end, others = halves(take, 4)
        endings, g = among(i, end, [" ".join(o) for o in others])
        w = start.split()  # WikiHow's markers in some, as lm-eval's preprocess meets them
        return {"activity_label": ["Reading", "Stories", "Home and Garden"][i % 3], "ctx": "", "label": str(g),
                "ctx_a": ("[header] " if i % 4 == 0 else "") + " ".join(w[:-2]) + (" [title]" if i % 5 == 0 else ""),
                "ctx_b": " ".join(w[-2:]).lower(), "endings": endings}
    if task.startswith("arc"):
        s, *others = take(4)
        choices, g = among(i, s.split()[-1], [o.split()[-1] for o in others])
        labels = list("ABCD") if i % 3 else list("1234")  # a third with numeric labels, as ARC has
        return {"id": f"p{i}", "question": " ".join(s.split()[:-1]) + " ... which word ends it?",
                "choices": {"text": choices, "label": labels}, "answerKey": labels[g]}
    if task == "mmlu":
        s, *others = take(4)
        choices, g = among(i, " ".join(s.split()[:5]), [" ".join(o.split()[:5]) for o in others])
        return {"question": f"Which words open the sentence that goes on: '{' '.join(s.split()[5:])}'?",
                "choices": choices, "answer": g, "subject": "world_literature"}
    if task in ("ceval", "cmmlu"):
        s, *others = take(4)
        opts, g = among(i, s[-6:], [o[-6:] for o in others])
        q, a = ("question", "answer") if task == "ceval" else ("Question", "Answer")
        return {q: f"“{s[:-6]}”的下文是什么？", **dict(zip("ABCD", opts)), a: "ABCD"[g],
                "subject": "中国语言文学" if task == "ceval" else "中国古代文学"}
    if task == "piqa":
        goal, end, others = halves(take, 2)
        sols, g = among(i, end, [" ".join(others[0])])
        return {"goal": goal, "sol1": sols[0], "sol2": sols[1], "label": g}
    if task == "boolq":
        p, q, o = take(3)
        asked = (p if i % 2 else o).rstrip(".!?").split()[:8]  # yes: words of the passage
        return {"question": "does the passage say " + " ".join(asked).lower(), "passage": f"{p} {q}", "idx": i,
                "label": i % 2}
    if task == "siqa":
        context, end, others = halves(take, 3)
        answers, g = among(i, end, [" ".join(o) for o in others])
        return {"context": context, "question": ["What happens next?", "How does it go on?", "What then?"][i % 3],
                "answerA": answers[0], "answerB": answers[1], "answerC": answers[2], "label": str(g + 1)}
    if task == "openbookqa":
        s, *others = take(4)
        texts, g = among(i, " ".join(s.split()[-3:]), [" ".join(o.split()[-3:]) for o in others])
        return {"id": f"{i}-{g}", "question_stem": " ".join(s.split()[:-3]),
                "choices": {"text": texts, "label": list("ABCD")},
                "answerKey": (" " if i % 5 == 0 else "") + "ABCD"[g]}  # lm-eval strips a leading space
    if task == "winogrande":
        s, o = take(2)
        w, j = s.split(), len(s.split()) // 2  # the blank mid-sentence: there is an end to score after it
        options, g = among(i, w[j], [max(o.split(), key=len)])
        return {"sentence": " ".join(w[:j] + ["_"] + w[j + 1:]), "option1": options[0], "option2": options[1],
                "answer": str(g + 1)}
    if task == "race":  # an article and 1-3 problems, the last scored; a cloze question ("  _  .") now and then
        problems = []
        for j in range(1 + i % 3):
            start, end, others = halves(take, 4)  # four options: the sentence's end and three others'
            options, g = among(i + j, end, [" ".join(o) for o in others])
            q = f"After '{start}' comes  _  ." if (i + j) % 3 == 0 else f"What comes after '{start}'?"
            problems.append({"question": q, "options": options, "answer": "ABCD"[g]})
        return {"example_id": f"r{i}", "article": " ".join(take(3)), "problems": repr(problems)}  # as EleutherAI/race
    if task == "crows_pairs_english":  # a sentence and the same with two words swapped
        s, = take(1)
        w = s.split()
        w[1], w[-2] = w[-2], w[1]
        return {"sent_more": s, "sent_less": " ".join(w), "bias_type": ["age", "gender", "religion"][i % 3]}
    start, end, others = halves(take, 5)  # truthfulqa_mc1 and _mc2: the same rows
    wrong, true = [" ".join(o) for o in others], [end, f"It goes on: {end}"][:1 + i % 2]
    return {"question": f"What comes after '{start}'?",  # MC2: one or two true answers, two to four false
            "mc1_targets": {"choices": [end] + wrong[:3], "labels": [1, 0, 0, 0]},
            "mc2_targets": {"choices": true + wrong[:2 + i % 3], "labels": [1] * len(true) + [0] * (2 + i % 3)}}


# task: (the split its shots come from, as tasks.SHOT_SPLIT names it; lm-eval's config for it,
# under lm_eval/tasks; the split that config scores)
TASKS = {
    "hellaswag": ("train", "hellaswag/hellaswag.yaml", "validation"),
    "arc_easy": ("train", "arc/arc_easy.yaml", "test"),
    "arc_challenge": ("train", "arc/arc_challenge.yaml", "test"),
    "mmlu": ("dev", "mmlu/default/_default_template_yaml", "test"),
    "ceval": ("dev", "ceval/_default_ceval_yaml", "val"),
    "cmmlu": ("dev", "cmmlu/_default_template_yaml", "test"),
    "piqa": ("train", "piqa/piqa.yaml", "validation"),
    "boolq": ("train", "super_glue/boolq/default.yaml", "validation"),
    "siqa": ("train", "siqa/siqa.yaml", "validation"),
    "openbookqa": ("train", "openbookqa/openbookqa.yaml", "test"),
    "winogrande": ("train", "winogrande/default.yaml", "validation"),  # its !functions load from beside it
    "truthfulqa_mc1": ("validation", "truthfulqa/truthfulqa_mc1.yaml", "validation"),
    "truthfulqa_mc2": ("validation", "truthfulqa/truthfulqa_mc2.yaml", "validation"),
    # no few-shot split in their configs: lm-eval draws from the test split it scores (X.test.jsonl, a copy)
    "race": ("test", "race/race.yaml", "test"),
    "crows_pairs_english": ("test", "crows_pairs/crows_pairs_english.yaml", "test"),
}
EXTRA = {  # lines added to lm-eval's config: the description its per-subject configs add (one subject here),
    "mmlu": 'description: "The following are multiple choice questions (with answers) about world literature.\\n\\n"',
    "ceval": 'description: "以下是中国关于中国语言文学的单项选择题，请选出其中的正确答案。\\n\\n"',
    "cmmlu": 'description: "以下是关于中国古代文学的单项选择题，请直接给出正确答案的选项。\\n\\n"'}


def build(folder, seed=0):
    """N_ITEMS items per task, and its shot file: N_POOL more, or for TruthfulQA a copy of its
    items (it has no train split: lm-eval draws its shots from the validation split it scores)."""
    text = {"en": sentences("en"), "zh": sentences("zh")}
    os.makedirs(folder, exist_ok=True)
    for task, (split, _, _) in TASKS.items():
        rnd = random.Random(f"{seed}:{task}")  # sentences may recur across tasks, never within an item
        lang = "zh" if task in ("ceval", "cmmlu") else "en"
        items = [make(task, i, lambda n: rnd.sample(text[lang], n)) for i in range(N_ITEMS + N_POOL)]
        pool = items[:N_ITEMS] if split in ("validation", "test") else items[N_ITEMS:]
        for name, rows in ((f"{task}.jsonl", items[:N_ITEMS]), (f"{task}.{split}.jsonl", pool)):
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# -----------------------------------------------------------------------------
# where the time goes, measured the same way on both sides

class Clock:
    """Seconds in named calls (wrapped functions) and in the model's forwards (hooks), with the
    forwards' rows and tokens (padding included); nested spans count in each."""

    def __init__(self):
        self.spans, self._t = {}, 0.0

    def add(self, **values):
        for key, value in values.items():
            self.spans[key] = self.spans.get(key, 0) + value

    def wrap(self, obj, name, key):
        f = getattr(obj, name)

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return f(*a, **kw)
            finally:
                self.add(**{key: time.perf_counter() - t})
        setattr(obj, name, timed)

    def forwards(self, module):
        module.register_forward_pre_hook(lambda m, args: setattr(self, "_t", time.perf_counter()))
        module.register_forward_hook(lambda m, args, out: self.add(
            forward=time.perf_counter() - self._t, rows=len(args[0]), tokens=args[0].numel()))


# -----------------------------------------------------------------------------
# lm-eval's side: its task configs, pointed at our files (run in lm-eval's environment)

def lmeval_side(items_dir, hf_dir, threads):
    reply = os.fdopen(os.dup(1), "w")  # our answers; lm-eval's own prints go to stderr, the log
    os.dup2(2, 1)
    import torch, transformers, lm_eval
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    torch.set_num_threads(threads)
    root, conf = os.path.join(os.path.dirname(lm_eval.__file__), "tasks"), os.path.join(items_dir, "..", "lmeval")
    os.makedirs(conf, exist_ok=True)
    for task, (shot, config, split) in TASKS.items():  # lm-eval's config, its dataset keys replaced
        files = {shot: f"{task}.{shot}.jsonl", split: f"{task}.jsonl"}  # TruthfulQA: one split for both
        with open(os.path.join(conf, f"parity_{task}.yaml"), "w", encoding="utf-8") as f:
            f.write(f"include: {os.path.join(root, config)}\ntask: parity_{task}\ntag: []\ndataset_path: json\n"
                    "dataset_name: null\ndataset_kwargs:\n  data_files:\n" +
                    "".join(f"    {k}: {os.path.join(items_dir, v)}\n" for k, v in files.items()) + EXTRA.get(task, ""))
    tm = TaskManager(include_path=conf)
    lm = HFLM(pretrained=hf_dir, dtype="float32", batch_size=BATCH_SIZES[0], device="cpu")
    clock, loaded, setup = Clock(), {}, {}
    clock.wrap(lm, "loglikelihood", "tokenize+score"), clock.wrap(lm, "_loglikelihood_tokens", "score")
    clock.forwards(lm.model)
    versions = f"lm-eval {lm_eval.__version__}, transformers {transformers.__version__}, torch {torch.__version__}"
    print(json.dumps(dict(threads=torch.get_num_threads(), versions=versions)), file=reply, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        key = json.dumps(cmd["shots"], sort_keys=True)
        if key not in loaded:  # tasks and datasets loaded once per setting, outside the timing
            t = time.perf_counter()
            loaded[key] = tm.load([f"parity_{task}" for task in cmd["shots"]])
            for name, task in loaded[key]["tasks"].items():  # as simple_evaluate sets them up:
                if task.get_config("num_fewshot") != 0:  # a task pinned at 0 (TruthfulQA) keeps it
                    task.set_config(key="num_fewshot", value=cmd["shots"][name[len("parity_"):]])
                clock.wrap(task, "build_all_requests", "prompts")
            setup[key] = time.perf_counter() - t
        for task in loaded[key]["tasks"].values():
            task.set_fewshot_seed(seed=FEWSHOT_SEED)  # each run draws the same shots, as a fresh one does
        lm.batch_size_per_gpu = cmd["bs"]  # what HFLM(batch_size=) sets
        clock.spans = {}
        t = time.perf_counter()
        res = evaluate(lm=lm, task_dict=loaded[key], log_samples=cmd["samples"])
        out = dict(seconds=time.perf_counter() - t, spans=clock.spans, setup=setup)
        if cmd["samples"]:
            out["tasks"] = {task[len("parity_"):]: [
                dict(args=[list(a) for a in s["arguments"]], ll=[r[0][0] for r in s["resps"]], acc=s.get("acc", s.get("pct_stereotype")),
                     acc_norm=s.get("acc_norm")) for s in sorted(samples, key=lambda s: s["doc_id"])]
                for task, samples in res["samples"].items()}
        print(json.dumps(out, ensure_ascii=False), file=reply, flush=True)


class LmEval:
    """lm-eval's side as a subprocess, the model loaded once; run() sends a command, reads its answer."""

    def __init__(self, python, items_dir, hf_dir, threads, log):
        self.p = subprocess.Popen([python, __file__, "--lmeval-side", items_dir, hf_dir, "--threads", str(threads)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
        self.log, self.hello = log, self.run()

    def run(self, shots=None, bs=None, samples=False):  # no shots: the answer to starting
        if shots is not None:
            self.p.stdin.write(json.dumps(dict(shots=shots, bs=bs, samples=samples)) + "\n")
            self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            sys.exit(f"lm-eval's side stopped; the end of {self.log}:\n" + open(self.log).read()[-3000:])
        self.last = json.loads(line)
        return self.last


# -----------------------------------------------------------------------------
# ours, in this process

class Ours:
    """tasks.py as eval.py runs it (run_task), timed, with the items read beforehand (lm-eval's
    datasets are loaded before its timing too); rows() gives each request for the comparison."""

    def __init__(self, path, items_dir, threads, progress):
        import torch, eval as ev, tasks
        self.T, self.items_dir = tasks, items_dir
        torch.set_num_threads(threads)
        self.threads = torch.get_num_threads()
        self.model, _, self.enc, _ = ev.load(ev.checkpoints(path)[-1], "cpu")
        self.clock = Clock()
        # run_task finds these by name: the items read once, progress bars to a file as lm-eval's
        tasks.read_task = functools.lru_cache(maxsize=None)(tasks.read_task)
        tasks.tqdm = functools.partial(tasks.tqdm, file=progress)
        for name, key in (("contexts", "prompts"), ("encode_pair", "tokenize"), ("loglikelihoods", "score")):
            self.clock.wrap(tasks, name, key)
        self.score = tasks.loglikelihoods
        self.clock.forwards(self.model)

    def rows(self, task, shots, bs):
        import numpy as np
        T = self.T
        path = os.path.join(self.items_dir, f"{task}.jsonl")
        items, prompts = T.task_prompts(path, T.shots_of(path, shots))  # TruthfulQA: 0, pinned
        reqs = [T.requests_of(c, item) for c, item in zip(prompts, items)]
        toks = [T.encode_pair(self.enc, *r) for rs in reqs for r in rs]
        ll, out = iter(T.loglikelihoods(self.model, toks, bs)), []
        for item, rs in zip(items, reqs):
            s = [next(ll) for _ in rs]
            norm = float(np.argmax([v / len(c) for v, c in zip(s, item.choices)]) == item.gold)
            # CrowS-Pairs: acc is whether the stereotypical sentence is the likelier (pct_stereotype per pair)
            acc = (float(s[0] > s[1]) if task in T.PAIRS else T.true_mass(s, item.labels) if item.labels
                   else float(np.argmax(s) == item.gold))
            out.append(dict(args=[list(r) for r in rs], ll=s, acc=acc,
                            acc_norm=None if task in T.ACC_ONLY | T.PAIRS else norm))
        return dict(rows=out, cut=sum(len(c) + len(d) - 1 > self.model.cfg.max_seq_len for c, d in toks))

    def run(self, shots, bs, share=True):
        self.T.loglikelihoods = functools.partial(self.score, share_context=share)  # off: a row per request
        self.clock.spans = {}
        t = time.perf_counter()
        try:
            run = {task: self.T.run_task(self.model, self.enc, os.path.join(self.items_dir, f"{task}.jsonl"), k, bs)
                   for task, k in shots.items()}
        finally:
            self.T.loglikelihoods = self.score
        acc = {task: r["acc"] if "acc" in r else r["pct_stereotype"] for task, r in run.items()}
        return dict(seconds=time.perf_counter() - t, spans=self.clock.spans, acc=acc)


# -----------------------------------------------------------------------------
# the comparison, and the timing

def compare(runs, ours, theirs):
    lines = ["| task | shots | items | requests | prompts identical | max abs log-lik. gap | acc same | acc_norm same "
             "| acc ours / lm-eval |", "|---|---|---|---|---|---|---|---|---|"]
    worst, bad = 0.0, []
    for label, shots in runs:
        for task, k in shots.items():
            mine, them = ours[label][task]["rows"], theirs[label][task]
            pairs, nreq = list(zip(mine, them)), sum(len(r["args"]) for r in mine)
            same = sum(a == b for r, t in pairs for a, b in zip(r["args"], t["args"]))
            gap = max(abs(a - b) for r, t in pairs for a, b in zip(r["ll"], t["ll"]))
            worst = max(worst, gap)
            mc2 = task == "truthfulqa_mc2"  # its metric is the true answers' mass, a number, not a pick
            d = [abs(r["acc"] - t["acc"]) for r, t in pairs]
            nacc = sum(x <= (1e-6 if mc2 else 0) for x in d)
            acc = f"{nacc}/{len(mine)}" + (f" (mass within 1e-6; max gap {max(d):.1e})" if mc2 else "")
            naccn = sum(r["acc_norm"] == t["acc_norm"] for r, t in pairs)
            accn = f"{naccn}/{len(mine)}" if them[0]["acc_norm"] is not None else "(lm-eval: acc only)"
            if (len(mine) != len(them) or same != nreq or nreq != sum(len(t["args"]) for t in them) or gap > 1e-4
                    or nacc != len(mine) or accn[0] != "(" and naccn != len(mine)):
                bad.append(f"{task} at {k} shots")
            k = f"0 (pinned; {k} asked)" if k and task.startswith("truthfulqa") else k  # both sides pin it
            lines.append(f"| {task} | {k} | {len(mine)} | {nreq} | {same}/{nreq} | {gap:.2e} | {acc} | {accn} | "
                         + " / ".join(f"{sum(r['acc'] for r in rs) / len(rs):.3f}" for rs in (mine, them)) + " |")
    return lines, worst, bad


SIDES = (("nano360, shared context", True), ("lm-eval", None), ("nano360, unshared", False))


def cpu_ticks(pids):
    """(ticks the machine's CPUs were busy, ticks in all, ticks these processes ran), from /proc."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    own = sum(int(x) for p in pids for x in open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[11:13])
    return sum(v) - v[3] - v[4], sum(v), own


def others(pids, before):
    """The share of the machine's CPU time that other processes took since `before`."""
    now = cpu_ticks(pids)
    return max(0.0, (now[0] - before[0] - now[2] + before[2]) / max(1, now[1] - before[1]))


def timing(ours, theirs, configs, repeats, quiet, patience):
    """Every setting at every batch size, the three sides in turn (which goes first rotates each
    round), `repeats` rounds. Before each trial, up to `patience` seconds' wait for a quiet second
    (others' share of the CPUs at most `quiet`: on 2 cores one busy process doubles a time); with
    each trial, the load average (1, 5, 15 min) before and after, and others' share during it."""
    trials, pids = {}, (os.getpid(), theirs.p.pid)
    for r in range(repeats):
        for label, shots, _ in configs:
            for bs in BATCH_SIZES:
                for who, share in SIDES[r % 3:] + SIDES[:r % 3]:
                    for waited in range(0, patience + 1, 5):
                        t = cpu_ticks(pids)
                        time.sleep(1)
                        if others(pids, t) <= quiet:
                            break
                        time.sleep(4)
                    before, t = os.getloadavg(), cpu_ticks(pids)
                    res = theirs.run(shots, bs) if share is None else ours.run(shots, bs, share)
                    res.update(load=(before, os.getloadavg()), others=others(pids, t))
                    trials.setdefault((label, bs, who), []).append(res)
                    print(f"# round {r + 1}, {label} shots, batch {bs}, {who}: {res['seconds']:.3f} s; others' CPU "
                          f"{res['others']:.0%} (waited {waited} s); load " + " -> ".join(
                              " ".join(f"{x:.2f}" for x in l) for l in res["load"]), flush=True)
    return trials


def speed_report(trials, configs, requests):
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in trials.items()}
    print("\n| shots | requests | batch | nano360 shared (s) | nano360 unshared (s) | lm-eval (s) | lm-eval / nano360 "
          "shared | lm-eval / nano360 unshared | 1-min load, its trials | others' CPU, best trials |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for label, _, _ in configs:
        for bs in BATCH_SIZES:
            a, b, u = (best[(label, bs, who)]["seconds"] for who, _ in SIDES)
            loads = [l[0] for who, _ in SIDES for t in trials[(label, bs, who)] for l in t["load"]]
            print(f"| {label} | {requests[label]} | {bs} | {a:.3f} | {u:.3f} | {b:.3f} | {b / a:.2f} | {b / u:.2f} | "
                  f"{min(loads):.2f}-{max(loads):.2f} | {max(best[(label, bs, w)]['others'] for w, _ in SIDES):.0%} |")
    print("\nwhere the time goes, in the best trial of each (seconds): prompts built; tokenized; the model's forwards "
          "(their rows and tokens, padding included); the rest of scoring (batching, log-softmax, the KV cache's "
          "copies); the rest (metrics, bookkeeping)\n\n| shots | batch | side | total | prompts | tokenize | forward "
          "| forward rows / tokens | rest of scoring | rest |\n|---|---|---|---|---|---|---|---|---|---|")
    for (label, bs, who), r in sorted(best.items(), key=lambda kv: [c[0] for c in configs].index(kv[0][0])):
        s = dict(dict.fromkeys(("prompts", "tokenize", "forward", "rows", "tokens"), 0), **r["spans"])
        if "tokenize+score" in s:  # lm-eval tokenizes in loglikelihood, then scores
            s["tokenize"] = s["tokenize+score"] - s["score"]
        print(f"| {label} | {bs} | {who} | {r['seconds']:.3f} | {s['prompts']:.3f} | {s['tokenize']:.3f} | "
              f"{s['forward']:.3f} | {s['rows']:.0f} / {s['tokens']:.0f} | {s['score'] - s['forward']:.3f} | "
              f"{r['seconds'] - s['prompts'] - s['tokenize'] - s['score']:.3f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt", nargs="?", help="a checkpoint, or a run folder (its newest)")
    ap.add_argument("--python", default="/work/peers/lmeval/bin/python", help="lm-eval's environment")
    ap.add_argument("--shots", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timing: best of this many alternating rounds")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads, the same on both sides")
    ap.add_argument("--quiet", type=float, default=0.1, help="timing: wait for others' CPU share to be at most this")
    ap.add_argument("--patience", type=int, default=600, help="timing: seconds to wait for it, per trial")
    ap.add_argument("--out", default="/tmp/lmeval_parity")
    ap.add_argument("--lmeval-side", nargs=2, metavar=("ITEMS", "HF_DIR"))
    ap.add_argument("--ours", choices=("ckpt", "hf"), default="ckpt", help="nano360 scores the checkpoint or its export")
    args = ap.parse_args()
    if args.lmeval_side:
        return lmeval_side(*args.lmeval_side, args.threads)
    import tasks
    assert FEWSHOT_SEED == tasks.FEWSHOT_SEED and all(TASKS[t][0] == tasks.SHOT_SPLIT[t] for t in TASKS)
    items, hf = os.path.join(args.out, "items"), os.path.join(args.out, "hf")
    build(items)
    subprocess.run([sys.executable, os.path.join(HERE, "..", "eval.py"), "export", args.ckpt, hf], check=True)
    theirs = LmEval(args.python, items, hf, args.threads, os.path.join(args.out, "lmeval_side.log"))
    ours = Ours(args.ckpt if args.ours == "ckpt" else hf, items, args.threads,
                open(os.path.join(args.out, "nano360_progress.log"), "w"))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"{theirs.hello['versions']}; nano360 scores {args.ckpt if args.ours == 'ckpt' else hf}; torch threads: "
          f"nano360 {ours.threads}, lm-eval {theirs.hello['threads']}; {os.cpu_count()} CPUs ({cpu}); "
          f"{time.strftime('%Y-%m-%d %H:%M')}; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"tasks.py's tasks not built here: {', '.join(t for t in tasks.TASKS if t not in TASKS) or 'none'}")

    # the published counts above 0, a setting each: {5: [mmlu, ...], 10: [hellaswag], 25: [arc_easy, ...]}
    published = {k: [t for t in TASKS if tasks.SHOTS[t] == k] for k in sorted({tasks.SHOTS[t] for t in TASKS} - {0})}
    runs = [("0", dict.fromkeys(TASKS, 0)), (str(args.shots), dict.fromkeys(TASKS, args.shots)),
            ("published", {t: k for k, ts in published.items() for t in ts})]
    mine, them = {}, {}
    for label, shots in runs:  # these runs warm both sides up before the timing, too
        mine[label] = {task: ours.rows(task, k, BATCH_SIZES[0]) for task, k in shots.items()}
        them[label] = theirs.run(shots, BATCH_SIZES[0], samples=True)["tasks"]
    lines, worst, bad = compare(runs, mine, them)
    print("\n".join(lines))
    print(f"\nlargest log-likelihood gap: {worst:.2e} nats; parity {'FAILS: ' + ', '.join(bad) if bad else 'holds'} "
          "(prompts identical, gap <= 1e-4, predictions the same, MC2 within 1e-6)")
    print(f"requests longer than the model's {ours.model.cfg.max_seq_len}-token window, cut from the left as lm-eval "
          "cuts them (at 10 and 25 shots most shots are cut away, and no context is shared):")
    for label, m in mine.items():
        n = sum(len(x["args"]) for r in m.values() for x in r["rows"])
        print(f"  {label} shots: {sum(r['cut'] for r in m.values())} of {n}"
              + "".join(f"; {t} {r['cut']}" for t, r in m.items() if r["cut"]))

    # the timed settings: (label, {task: shots}, the compared run that holds their requests)
    configs = [(label, shots, label) for label, shots in runs[:2]] + [
        (f"{k} ({', '.join(ts)})", dict.fromkeys(ts, k), "published") for k, ts in published.items()]
    requests = {label: sum(len(x["args"]) for t in shots for x in mine[run][t]["rows"]) for label, shots, run in configs}
    print(f"\ntiming: the scoring alone (model loaded, items read), batch sizes {BATCH_SIZES}, best of {args.repeats} "
          f"rounds, the sides alternating (which goes first rotates); each trial after a quiet second (others' CPU "
          f"share <= {args.quiet:.0%}, waiting up to {args.patience} s)")
    trials = timing(ours, theirs, configs, args.repeats, args.quiet, args.patience)
    speed_report(trials, configs, requests)
    setup = theirs.last["setup"]
    print("\nlm-eval's task and dataset loading (TaskManager.load), outside its timing, once per setting: " + ", ".join(
        f"{label} shots {setup[json.dumps(shots, sort_keys=True)]:.2f} s" for label, shots, _ in configs))
    mean = {(run, t): sum(r["acc"] for r in mine[run][t]["rows"]) / N_ITEMS for _, shots, run in configs for t in shots}
    # within 1e-6: MC2's mass moves by ~1e-8 between the shared and unshared paths; a changed pick moves acc by 0.05
    same = all(abs(tr["acc"][t] - mean[(run, t)]) <= 1e-6 for label, _, run in configs for bs in BATCH_SIZES
               for who, share in SIDES if share is not None for tr in trials[(label, bs, who)] for t in tr["acc"])
    print(f"run_task's acc, shared and unshared, the compared items' mean (within 1e-6): {'yes' if same else 'NO'}")
    theirs.p.stdin.close(), theirs.p.wait()
    return 1 if bad or not same else 0


if __name__ == "__main__":
    sys.exit(main())
