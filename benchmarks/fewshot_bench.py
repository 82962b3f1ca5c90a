"""Few-shot scoring, a row per request (every request reads its context + continuation, lm-eval's
layout) against the shared context (tasks.loglikelihoods' share_context: an item's context once,
its continuations after it in the same row, each seeing the context and itself), on HellaSwag-format items at 0 and 10 shots and
MMLU-format items at 5 shots, synthesized from data/tiny's English text (items and their own
shot file). One torch thread by default (--threads). Best of 3 wall-clock seconds per path; the largest difference of a request's
log-likelihood between the two paths is printed too.

    python benchmarks/fewshot_bench.py                 # trains a tiny model into a temp dir
    python benchmarks/fewshot_bench.py --ckpt=out/toy/ckpt_0000400 --items=100
"""
import argparse, json, os, random, re, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import helpers  # noqa: E402  (puts ROOT on sys.path)

import torch  # noqa: E402

import eval as ev  # noqa: E402
import tasks  # noqa: E402
import train  # noqa: E402


def sentences():
    text = " ".join(helpers.load("en"))
    out = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    return [s for s in out if 6 <= len(s.split()) <= 30]


def hellaswag_items(rnd, sents, n):
    items = []
    for _ in range(n):
        s = rnd.choice(sents).split()
        k = max(2, len(s) // 2)
        ends = [" ".join(rnd.choice(sents).split()[:rnd.randint(6, 20)]) for _ in range(4)]
        items.append({"activity_label": rnd.choice(["Reading", "Walking", "Talking"]),
                      "ctx_a": " ".join(s[:k]), "ctx_b": " ".join(s[k:k + 3]),
                      "endings": ends, "label": rnd.randrange(4)})
    return items


def mmlu_items(rnd, sents, n, subject="world literature"):
    return [{"question": rnd.choice(sents), "choices": [" ".join(rnd.choice(sents).split()[:5])
                                                        for _ in range(4)],
             "answer": rnd.randrange(4), "subject": subject} for _ in range(n)]


def write(path, items):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(it) + "\n" for it in items)


def model_and_enc(args, tmp):
    if args.ckpt:
        model, _, enc, _ = ev.load(args.ckpt)
        return model.eval(), enc
    tokens, out = os.path.join(tmp, "tokens"), os.path.join(tmp, "run")
    helpers.tokenize_tiny(tokens)
    train.main(helpers.small_args(tokens, out, "--n_layer=4", "--d_model=128", "--n_head=4",
                                  "--ffn_hidden=256", f"--max_seq_len={args.window}",
                                  "--max_steps=5", "--ckpt_interval=5"))
    model, _, enc, _ = ev.load(os.path.join(out, "ckpt_0000005"))
    return model.eval(), enc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default="", help="a checkpoint (default: train a tiny model)")
    p.add_argument("--items", type=int, default=40, help="items per task file")
    p.add_argument("--window", type=int, default=2048, help="the tiny model's max_seq_len")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: a busy 2-core "
                   "machine's OpenMP threads wait on each other, and the timings say nothing)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rnd, sents = random.Random(0), sentences()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model, enc = model_and_enc(args, tmp)
        for task, shots, make in [("hellaswag", 0, hellaswag_items),
                                  ("hellaswag", 10, hellaswag_items), ("mmlu", 5, mmlu_items)]:
            path = os.path.join(tmp, f"{task}.jsonl")
            write(path, make(rnd, sents, args.items))
            write(tasks.shots_file(path), make(rnd, sents, max(args.items, shots + 1)))
            items, prompts = tasks.task_prompts(path, shots)
            reqs = [tasks.encode_pair(enc, *r) for pr, it in zip(prompts, items)
                    for r in tasks.requests_of(pr, it)]
            cut = sum(len(c) + len(x) - 1 > model.cfg.max_seq_len for c, x in reqs)
            tokens = sum(len(c) + len(x) - 1 for c, x in reqs)
            got = {}
            for share in (False, True):
                best = float("inf")
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    got[share] = tasks.loglikelihoods(model, reqs, args.batch_size, desc=task,
                                                      share_context=share)
                    best = min(best, time.perf_counter() - t)
                rows.append((task, shots, len(reqs), cut, tokens, share, best))
            diff = max(abs(a - b) for a, b in zip(got[False], got[True]))
            rows[-1] += (diff,)
    print(f"model: {model.num_params():,} parameters, window {model.cfg.max_seq_len}, "
          f"{torch.get_num_threads()} threads, batch_size {args.batch_size}, best of {args.repeats}")
    print(f"{'task':10s} {'path':8s} {'shots':>5s} {'requests':>8s} {'cut':>4s} {'tokens':>7s} "
          f"{'seconds':>8s} {'ratio':>6s} {'max |diff| nats':>15s}")
    for i, (task, shots, n, cut, tokens, share, sec, *diff) in enumerate(rows):
        base = rows[i - 1][6] if share else sec
        print(f"{task:10s} {'shared' if share else 'per row':8s} {shots:5d} {n:8d} {cut:4d} "
              f"{tokens:7d} {sec:8.3f} {base / sec:5.2f}x "
              f"{(f'{diff[0]:.2e}' if diff else ''):>15s}")


if __name__ == "__main__":
    main()
