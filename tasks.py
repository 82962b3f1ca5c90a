"""
Multiple-choice tasks, scored as lm-evaluation-harness 0.4 scores them (its task configs
hellaswag, arc_easy, arc_challenge, mmlu, ceval-valid, cmmlu): the same prompts, description,
shots, continuation boundary, acc_norm and standard errors, so scores compare with published
ones. eval.py runs them on every checkpoint of a sweep.

Tasks are JSONL files in the public formats, one task per file, named after it: hellaswag*,
arc_easy*, arc_challenge*, mmlu*, ceval*, cmmlu*; beside X.jsonl, X.dev.jsonl (MMLU, C-Eval,
CMMLU) or X.train.jsonl (ARC, HellaSwag) gives the shots (the published counts by default: ARC
25, HellaSwag 10, MMLU / C-Eval / CMMLU 5). An item is scored by the log-likelihood of " " +
answer after its prompt: acc, and acc_norm (per character of answer).
"""
import json, math, os, random, re, typing

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from config import ConfigError
from model import autocast
from stage import DataError

TASKS = ("hellaswag", "arc_easy", "arc_challenge", "mmlu", "ceval", "cmmlu")
# the shots published numbers use (Open LLM Leaderboard: ARC 25, HellaSwag 10, MMLU 5; the
# C-Eval and CMMLU papers: 5), and where lm-eval draws them: the first n of the dev split, or a
# seeded random draw (fewshot_seed 1234) from the train split
SHOTS = dict(hellaswag=10, arc_easy=25, arc_challenge=25, mmlu=5, ceval=5, cmmlu=5)
SHOT_SPLIT = dict(hellaswag="train", arc_easy="train", arc_challenge="train", mmlu="dev",
                  ceval="dev", cmmlu="dev")
FEWSHOT_SEED = 1234
DRAW_ONE_MORE = {"hellaswag"}
LETTERS = "ABCDEFGH"


class Item(typing.NamedTuple):
    prompt: str        # lm-eval's doc_to_text
    choices: list      # doc_to_choice: the answers, without the space put before them
    gold: int
    subject: str = ""  # mmlu, ceval, cmmlu: the description's subject, and the shots' pool


def _need(doc, keys, path, lineno):
    for k in keys:
        if k not in doc:
            raise DataError(f"{path}:{lineno}: missing field '{k}' (this file is read as "
                                 f"{task_of(path)}, which needs {', '.join(keys)})")
    return [doc[k] for k in keys]


def _gold(read, value, field, path, lineno):
    # the index of the right answer, read from field's value (a number or a letter)
    try:
        return read(value)
    except (ValueError, TypeError, AttributeError):
        raise DataError(f"{path}:{lineno}: {field} is {value!r}, not an answer "
                        f"{task_of(path)} can read") from None


def task_of(path):
    name = os.path.basename(path).lower()
    for task in TASKS:
        if name.startswith(task):
            return task
    raise DataError(f"{path}: unknown task (file names start with hellaswag, arc_easy, "
                    "arc_challenge, mmlu, ceval or cmmlu)")


def hellaswag_text(text):
    # lm-eval's hellaswag preprocess: WikiHow's [title]/[header]/[step] markers out
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def read_item(task, doc, path, lineno):
    if task == "hellaswag":
        # Rowan/hellaswag: {"activity_label", "ctx_a", "ctx_b", "endings", "label"}
        endings, label = _need(doc, ("endings", "label"), path, lineno)
        ctx = (doc["ctx_a"] + " " + doc.get("ctx_b", "").capitalize() if "ctx_a" in doc
               else _need(doc, ("ctx",), path, lineno)[0])
        return Item(hellaswag_text(doc.get("activity_label", "") + ": " + ctx),
                    [hellaswag_text(e) for e in endings], _gold(int, label, "label", path, lineno))
    if task.startswith("arc"):
        # allenai's {"question": {"stem", "choices"}, "answerKey"} or HF's flat one
        q, key = _need(doc, ("question", "answerKey"), path, lineno)
        stem, ch = ((q["stem"], q["choices"]) if isinstance(q, dict)
                    else (q, _need(doc, ("choices",), path, lineno)[0]))
        texts, labels = (([c["text"] for c in ch], [c["label"] for c in ch]) if isinstance(ch, list)
                         else (ch["text"], ch["label"]))
        if key not in labels:
            raise DataError(f"{path}:{lineno}: answerKey {key!r} is not one of "
                            f"the labels {labels}")
        return Item(f"Question: {stem}\nAnswer:", list(texts), labels.index(key))
    if task == "mmlu":  # cais/mmlu: {"question", "choices", "answer": 0-3, "subject"}
        q, ch, answer = _need(doc, ("question", "choices", "answer"), path, lineno)
        gold = _gold(lambda a: int(a) if str(a).isdigit() else list(LETTERS).index(str(a)), answer,
                     "answer", path, lineno)
        return Item(q.strip() + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(ch))
                    + "\nAnswer:",
                    list(LETTERS[:len(ch)]), gold, doc.get("subject", "").replace("_", " "))
    # ceval {"question", "A".."D", "answer"}, cmmlu {"Question", "A".."D", "Answer"};
    # "subject" optional
    qk, ak = ("question", "answer") if task == "ceval" else ("Question", "Answer")
    q, *opts, answer = _need(doc, (qk, "A", "B", "C", "D", ak), path, lineno)
    return Item(q.strip() + "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(opts))
                + "\n答案：",
                list("ABCD"), _gold(lambda a: list("ABCD").index(a.strip()), answer, ak, path,
                                    lineno), doc.get("subject", ""))


def read_task(path):
    """The items of a task file, in file order."""
    task, items = task_of(path), []
    for lineno, line in enumerate(open(path, encoding="utf-8"), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not JSON ({e.msg})") from None
        if not isinstance(doc, dict):
            raise DataError(f"{path}:{lineno}: not a JSON object (an item is one, with fields)")
        try:
            item = read_item(task, doc, path, lineno)
        except (TypeError, KeyError, AttributeError, ValueError, IndexError) as e:
            raise DataError(f"{path}:{lineno}: a field holds another kind of value than {task} "
                            f"reads ({type(e).__name__}: {e}; data/evals/README.md lists the "
                            "fields)") from None
        if not 0 <= item.gold < len(item.choices):
            raise DataError(f"{path}:{lineno}: the answer {item.gold} is not one of "
                            f"{len(item.choices)} choices")
        items.append(item)
    return items


def description(task, subject):
    if not subject:
        return ""
    return {"mmlu": "The following are multiple choice questions (with answers) about "
                    f"{subject}.\n\n",
            "ceval": f"以下是中国关于{subject}的单项选择题，"
                     "请选出其中的正确答案。\n\n",
            "cmmlu": f"以下是关于{subject}的单项选择题，"
                     "请直接给出正确答案的选项。\n\n"}.get(task, "")


def shots_file(path):
    """X.jsonl's few-shot file: X.dev.jsonl or X.train.jsonl, the split lm-eval draws from."""
    return path[:-len(".jsonl")] + f".{SHOT_SPLIT[task_of(path)]}.jsonl"


def shots_of(path, shots=None):
    """The shots a task gets: those asked, else the published count where its few-shot file is,
    else 0."""
    if shots is not None:
        return shots
    return SHOTS[task_of(path)] if os.path.exists(shots_file(path)) else 0


def contexts(path, items, shots):
    """The prompt of every item as lm-eval builds it: description, then `shots` solved items
    (prompt, " ", answer, each followed by a blank line), then the item's prompt."""
    task = task_of(path)
    pool = read_task(shots_file(path)) if shots else []
    if shots and len(pool) < shots:
        raise DataError(f"{shots_file(path)}: {len(pool)} items, "
                        f"fewer than the {shots} shots asked")
    rnd = random.Random(FEWSHOT_SEED)  # one draw after another, in item order, as lm-eval does
    out = []
    for item in items:
        if SHOT_SPLIT[task] == "dev":  # the first n of the item's own subject
            same = [p for p in pool if p.subject == item.subject] or pool
            chosen = same[:shots]
        elif shots:  # lm-eval 0.4.13 draws one more where its fewshot split "equals" the test split
            # (HellaSwag: neither is set) and drops the item itself, should it be among them
            chosen = [p for p in rnd.sample(pool, shots + (task in DRAW_ONE_MORE))
                      if p != item][:shots]
            if len(chosen) < shots:
                chosen = rnd.sample([p for p in pool if p != item], shots)
        else:
            chosen = []
        out.append(description(task, item.subject) +
                   "".join(f"{p.prompt} {p.choices[p.gold]}\n\n" for p in chosen) + item.prompt)
    return out


def encode_pair(enc, context, continuation):
    """(context tokens, continuation tokens) by lm-eval's rule: the context's trailing
    whitespace moves to the continuation, and the continuation is what encoding the whole adds
    after the context's tokens; both encoded as the tokenizer frames a text (a released
    tokenizer.json: LLaMA's <s> first)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    # lm-eval's prefix_token_id: bos where the tokenizer has one (HFTokenizer), else end-of-text
    if not context:
        return [enc.prefix_token], enc.encode_ordinary(continuation)
    ctx = enc.bos_ids + enc.encode_ordinary(context)
    return ctx, (enc.bos_ids + enc.encode_ordinary(context + continuation))[len(ctx):]


@torch.no_grad()
def loglikelihoods(model, requests, batch_size=16, max_tokens=32768, desc="loglikelihood"):
    """log P(continuation | context) of each (context tokens, continuation tokens), summed over
    the continuation: longest first, in batches of at most batch_size rows and max_tokens
    tokens, each row one forward of context + continuation (cut from the left to the model's
    length). Rows that are the same input (single-token answers after one context: letters)
    are one forward."""
    device, limit = next(model.parameters()).device, model.cfg.max_seq_len
    bf16 = autocast(device, device.type == "cuda")
    rows = {}  # input -> [(request index, continuation)]
    for i, (ctx, cont) in enumerate(requests):
        ids = (ctx + cont)[-(limit + 1):]
        rows.setdefault(tuple(ids[:-1]), []).append((i, cont))
    order = sorted(rows, key=len, reverse=True)
    out = [0.0] * len(requests)
    batches, start = [], 0
    while start < len(order):
        n = max(1, min(batch_size, max_tokens // len(order[start])))
        batches.append(order[start:start + n])
        start += n
    for batch in tqdm(batches, desc=desc, disable=len(batches) < 4, leave=False):
        T = len(batch[0])
        x = torch.zeros(len(batch), T, dtype=torch.long)
        for r, ids in enumerate(batch):
            # padded on the right: causal attention never sees it
            x[r, :len(ids)] = torch.tensor(ids)
        with bf16:
            logits = model(x.to(device))
        for r, ids in enumerate(batch):
            # the continuation's tokens are the targets of the last positions
            for i, cont in rows[ids]:
                pos = torch.arange(max(0, len(ids) - len(cont)), len(ids))
                logp = F.log_softmax(logits[r, pos].double(), -1)
                out[i] = logp.gather(
                    1, torch.tensor(cont[-len(pos):], device=logp.device)[:, None]).sum().item()
    return out


def stderr(hits):
    """lm-eval's standard error of a mean: the sample standard deviation over sqrt(n)."""
    n = len(hits)
    return float(np.std(hits, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def run_task(model, enc, path, shots=None, batch_size=16):
    """acc and acc_norm (log-likelihood over the answer's length in characters, without the
    space before it) with their standard errors, n and the shots used. shots=None: the
    published count when path has its few-shot file, else 0."""
    items = read_task(path)
    shots = shots_of(path, shots)
    requests, spans = [], []
    for context, item in zip(contexts(path, items, shots), items):
        spans.append((len(requests), len(item.choices)))
        requests += [encode_pair(enc, context, " " + c) for c in item.choices]
    ll = loglikelihoods(model, requests, batch_size, desc=os.path.basename(path))
    hits, hits_norm = [], []
    for (a, n), item in zip(spans, items):
        scores = ll[a:a + n]
        hits.append(float(np.argmax(scores) == item.gold))
        hits_norm.append(float(np.argmax([v / len(c) for v, c in zip(scores, item.choices)])
                               == item.gold))
    return dict(acc=float(np.mean(hits)), acc_stderr=stderr(hits),
                acc_norm=float(np.mean(hits_norm)), acc_norm_stderr=stderr(hits_norm),
                n=len(items), shots=shots)


def task_files(tasks_dir):
    """The task files of a folder (not their few-shot files)."""
    if not tasks_dir:
        return []
    if not os.path.isdir(tasks_dir):
        raise ConfigError(f"--tasks={tasks_dir}: no such folder")
    return [os.path.join(tasks_dir, f) for f in sorted(os.listdir(tasks_dir))
            if f.endswith(".jsonl") and not f.endswith((".dev.jsonl", ".train.jsonl"))]
