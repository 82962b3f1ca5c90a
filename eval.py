"""
Everything done with a checkpoint: loss and bits per byte per source, multiple-choice tasks,
memorization of the training data, a sweep over every checkpoint of a run, sampling, and the
Hugging Face Llama format both ways.

    python eval.py [OUT_DIR | CKPT] [--tasks=DIR] [--shots=K] [--seqs=N]   sweep: evals.jsonl, .md, .csv, .png
    python eval.py HF_DIR --tasks=DIR         a Hugging Face Llama folder, or a folder of them (a released
                                              model's intermediate checkpoints), with its tokenizer.json
    python eval.py sample CKPT --prompt="子曰：" [--temperature=0.8 --top_k=50 --top_p=0.95 --seed=0 --tokens=128]
    python eval.py export CKPT OUT_DIR        Hugging Face Llama: config.json, model.safetensors, tokenizer
    python eval.py import HF_DIR OUT.pt       a Llama checkpoint as our state dict (train.py --init_from=OUT.pt)

Tasks are JSONL files in the public formats, one task per file, named after it: hellaswag*,
arc_easy*, arc_challenge*, mmlu*, ceval*, cmmlu*; beside X.jsonl, X.dev.jsonl (MMLU, C-Eval,
CMMLU) or X.train.jsonl (ARC, HellaSwag) gives the shots. data/evals/ holds a few hand-made
items of each; put the real files in a folder and pass --tasks=FOLDER. Items are scored as
lm-evaluation-harness 0.4 scores them: its prompts, description and shots (the published
counts by default: ARC 25, HellaSwag 10, MMLU / C-Eval / CMMLU 5), the log-likelihood of
" " + answer after the prompt, acc, acc_norm (per character of answer) and standard errors.
"""
import argparse, csv, json, math, os, random, re, shutil, sys, typing
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import data
import train
from checkpoint import Checkpointer, CheckpointError
from config import ConfigError, run_command
from model import ModelConfig, sample_text

HERE = os.path.dirname(os.path.abspath(__file__))


# -----------------------------------------------------------------------------
# checkpoints

def is_hf(path):
    """A Hugging Face model folder: config.json and safetensors weights (a released model)."""
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.exists(os.path.join(path, f)) for f in ("model.safetensors", "model.safetensors.index.json"))


def name_of(ckpt):
    return os.path.basename(os.path.normpath(ckpt))


def step_of_name(ckpt):
    # a released model's intermediate checkpoints are folders named by step (LLM360: ckpt_000 ... ckpt_359)
    m = re.search(r"(\d+)$", name_of(ckpt))
    return int(m.group(1)) if m else None


def load(ckpt, device="cpu"):
    """(model, train config, tokenizer, meta) of a checkpoint written at any world size, or of a
    Hugging Face Llama folder (train config None; its tokenizer.json there or in the folder
    above, which may hold a released model's intermediate checkpoints)."""
    if not is_hf(ckpt):
        model, cfg, meta = train.load_model(ckpt, device)
        enc = data.tokenizer_of(cfg.data_dir, data.load_manifest(cfg.data_dir, verify=False))
        return model, cfg, enc, meta
    up = os.path.dirname(os.path.abspath(ckpt))
    where = [d for d in (ckpt, up) if os.path.isfile(os.path.join(d, "tokenizer.json"))]
    if not where:
        raise ConfigError(f"{ckpt}: no tokenizer.json in it or in {up}")
    enc = data.load_tokenizer(where[0])
    state, mcfg = import_llama(ckpt)
    if enc.n_vocab > mcfg.vocab_size:
        raise ConfigError(f"{where[0]}/tokenizer.json has {enc.n_vocab} tokens, more than {ckpt}'s vocab_size={mcfg.vocab_size}")
    model = train.build_model(mcfg, device, 0)
    model.load_state_dict(state)
    return model.eval(), None, enc, dict(step=step_of_name(ckpt), data_position=dict(tokens=None))


def checkpoints(path):
    """Every complete checkpoint of a run (oldest first), or the one given; or the Hugging Face
    folder given, or every one in the folder given, in the order of the numbers they end in."""
    if data.is_done(path) or is_hf(path):
        return [path]
    found = Checkpointer.complete(path)
    if not found and os.path.isdir(path):
        found = sorted((os.path.join(path, d) for d in os.listdir(path) if is_hf(os.path.join(path, d))),
                       key=lambda p: (step_of_name(p) is None, step_of_name(p) or 0, p))
    if not found:
        raise ConfigError(f"{path}: no complete checkpoint (a ckpt_* folder with DONE) and no Hugging Face model "
                          "folder (config.json + model.safetensors) there")
    return found


# -----------------------------------------------------------------------------
# loss and bits per byte

def loss_and_bpb(model, cfg, enc, max_seqs=0):
    """Per source of the held-out split: the mean loss per token (nats), computed as the run's own
    validation computes it (train.evaluate: the same sequences, batch size, document mask and
    dtype), and bits per byte on those packed windows (bpb_window: the loss of the windows' text
    in bits over its UTF-8 bytes; end-of-text is predicted and counts 0 bytes, each window's first
    token is unscored), the run's own figure. document_bpb is lm-eval's. max_seqs: sequences
    per source (0: the run's eval_seqs)."""
    manifest = data.load_manifest(cfg.data_dir, verify=False)
    val = data.val_sequences(cfg.data_dir, manifest, cfg.seq_len, max_seqs or cfg.eval_seqs)
    device = next(model.parameters()).device
    losses = train.evaluate(model, val, cfg.batch_size, device, train.autocast_for(cfg, device),
                            manifest["eot"] if cfg.doc_mask else None)
    special = special_ids(enc)
    out, nats, nbytes = {}, 0.0, 0
    for source, seqs in val.items():
        b = sum(len(enc.decode_bytes([t for t in row if t not in special])) for row in seqs[:, 1:].tolist())
        n = losses[source] * seqs[:, 1:].size  # the source's loss in nats, summed over its tokens
        out[f"loss/{source}"], out[f"bpb_window/{source}"] = losses[source], n / math.log(2) / max(b, 1)
        nats, nbytes = nats + n, nbytes + b
    out["loss/all"], out["bpb_window/all"] = losses["all"], nats / math.log(2) / max(nbytes, 1)
    return out


def special_ids(enc):
    return {enc.encode_single_token(t) for t in enc.special_tokens_set}


def held_out_documents(cfg, manifest, max_docs=0):
    """{source: [token lists]}: the val split cut at end-of-text, each piece a document (the first
    may be the tail of one that the split cut)."""
    out = {}
    for s in manifest["shards"]:
        if s["split"] == "val":
            t = data.read_shard(os.path.join(cfg.data_dir, s["file"])).tolist()
            cuts = [-1] + [i for i, x in enumerate(t) if x == manifest["eot"]] + [len(t)]
            out.setdefault(s["source"], []).extend(t[a + 1:b] for a, b in zip(cuts, cuts[1:]) if b > a + 1)
    return {k: v[:max_docs or None] for k, v in out.items()}


def document_bpb(model, cfg, enc, max_docs=0, batch_size=16):
    """Bits per byte as lm-eval's loglikelihood_rolling defines it: whole documents, the first
    token predicted after end-of-text, the rest in windows of the model's length each seeing
    one token before it, no end-of-text predicted; nats over ln 2 over the text's UTF-8 bytes."""
    manifest = data.load_manifest(cfg.data_dir, verify=False)
    L, out, nats_all, bytes_all = model.cfg.max_seq_len, {}, 0.0, 0
    special = special_ids(enc)  # a released tokenizer's <s>: 0 bytes
    for source, docs in held_out_documents(cfg, manifest, max_docs).items():
        requests = [([enc.eot_token] if a == 0 else [doc[a - 1]], doc[a:a + L]) for doc in docs for a in range(0, len(doc), L)]
        nats = -sum(loglikelihoods(model, requests, batch_size, desc=f"bpb {source}"))
        nbytes = sum(len(enc.decode_bytes([t for t in doc if t not in special])) for doc in docs)
        out[f"bpb_doc/{source}"] = nats / math.log(2) / max(nbytes, 1)
        nats_all, bytes_all = nats_all + nats, bytes_all + nbytes
    out["bpb_doc/all"] = nats_all / math.log(2) / max(bytes_all, 1)
    return out


# -----------------------------------------------------------------------------
# multiple-choice tasks, as lm-evaluation-harness 0.4 scores them (its task configs hellaswag,
# arc_easy, arc_challenge, mmlu, ceval-valid, cmmlu): the same prompts, description, shots,
# continuation boundary, acc_norm and standard errors, so scores compare with published ones

TASKS = ("hellaswag", "arc_easy", "arc_challenge", "mmlu", "ceval", "cmmlu")
# the shots published numbers use (Open LLM Leaderboard: ARC 25, HellaSwag 10, MMLU 5; the
# C-Eval and CMMLU papers: 5), and where lm-eval draws them: the first n of the dev split, or a
# seeded random draw (fewshot_seed 1234) from the train split
SHOTS = dict(hellaswag=10, arc_easy=25, arc_challenge=25, mmlu=5, ceval=5, cmmlu=5)
SHOT_SPLIT = dict(hellaswag="train", arc_easy="train", arc_challenge="train", mmlu="dev", ceval="dev", cmmlu="dev")
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
            raise data.DataError(f"{path}:{lineno}: missing field '{k}' (this file is read as "
                                 f"{task_of(path)}, which needs {', '.join(keys)})")
    return [doc[k] for k in keys]


def task_of(path):
    name = os.path.basename(path).lower()
    for task in TASKS:
        if name.startswith(task):
            return task
    raise data.DataError(f"{path}: unknown task (file names start with hellaswag, arc_easy, arc_challenge, "
                         "mmlu, ceval or cmmlu)")


def hellaswag_text(text):
    # lm-eval's hellaswag preprocess: WikiHow's [title]/[header]/[step] markers out
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def read_item(task, doc, path, lineno):
    if task == "hellaswag":  # Rowan/hellaswag: {"activity_label", "ctx_a", "ctx_b", "endings", "label"}
        endings, label = _need(doc, ("endings", "label"), path, lineno)
        ctx = doc["ctx_a"] + " " + doc.get("ctx_b", "").capitalize() if "ctx_a" in doc else _need(doc, ("ctx",), path, lineno)[0]
        return Item(hellaswag_text(doc.get("activity_label", "") + ": " + ctx), [hellaswag_text(e) for e in endings],
                    int(label))
    if task.startswith("arc"):  # allenai's {"question": {"stem", "choices"}, "answerKey"} or HF's flat one
        q, key = _need(doc, ("question", "answerKey"), path, lineno)
        stem, ch = (q["stem"], q["choices"]) if isinstance(q, dict) else (q, _need(doc, ("choices",), path, lineno)[0])
        texts, labels = ([c["text"] for c in ch], [c["label"] for c in ch]) if isinstance(ch, list) else (ch["text"], ch["label"])
        if key not in labels:
            raise data.DataError(f"{path}:{lineno}: answerKey {key!r} is not one of the labels {labels}")
        return Item(f"Question: {stem}\nAnswer:", list(texts), labels.index(key))
    if task == "mmlu":  # cais/mmlu: {"question", "choices", "answer": 0-3, "subject"}
        q, ch, answer = _need(doc, ("question", "choices", "answer"), path, lineno)
        gold = int(answer) if str(answer).isdigit() else LETTERS.index(str(answer))
        return Item(q.strip() + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(ch)) + "\nAnswer:",
                    list(LETTERS[:len(ch)]), gold, doc.get("subject", "").replace("_", " "))
    # ceval {"question", "A".."D", "answer"}, cmmlu {"Question", "A".."D", "Answer"}; "subject" optional
    qk, ak = ("question", "answer") if task == "ceval" else ("Question", "Answer")
    q, *opts, answer = _need(doc, (qk, "A", "B", "C", "D", ak), path, lineno)
    return Item(q.strip() + "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(opts)) + "\n答案：", list("ABCD"),
                "ABCD".index(answer.strip()), doc.get("subject", ""))


def read_task(path):
    """The items of a task file, in file order."""
    task, items = task_of(path), []
    for lineno, line in enumerate(open(path, encoding="utf-8"), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise data.DataError(f"{path}:{lineno}: not JSON ({e.msg})")
        item = read_item(task, doc, path, lineno)
        if not 0 <= item.gold < len(item.choices):
            raise data.DataError(f"{path}:{lineno}: the answer {item.gold} is not one of {len(item.choices)} choices")
        items.append(item)
    return items


def description(task, subject):
    if not subject:
        return ""
    return {"mmlu": f"The following are multiple choice questions (with answers) about {subject}.\n\n",
            "ceval": f"以下是中国关于{subject}的单项选择题，请选出其中的正确答案。\n\n",
            "cmmlu": f"以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n"}.get(task, "")


def shots_file(path):
    """X.jsonl's few-shot file: X.dev.jsonl or X.train.jsonl, the split lm-eval draws from."""
    return path[:-len(".jsonl")] + f".{SHOT_SPLIT[task_of(path)]}.jsonl"


def shots_of(path, shots=None):
    """The shots a task gets: those asked, else the published count where its few-shot file is, else 0."""
    if shots is not None:
        return shots
    return SHOTS[task_of(path)] if os.path.exists(shots_file(path)) else 0


def contexts(path, items, shots):
    """The prompt of every item as lm-eval builds it: description, then `shots` solved items
    (prompt, " ", answer, each followed by a blank line), then the item's prompt."""
    task = task_of(path)
    pool = read_task(shots_file(path)) if shots else []
    if shots and len(pool) < shots:
        raise data.DataError(f"{shots_file(path)}: {len(pool)} items, fewer than the {shots} shots asked")
    rnd = random.Random(FEWSHOT_SEED)  # one draw after another, in item order, as lm-eval does
    out = []
    for item in items:
        if SHOT_SPLIT[task] == "dev":  # the first n of the item's own subject
            same = [p for p in pool if p.subject == item.subject] or pool
            chosen = same[:shots]
        elif shots:  # lm-eval 0.4.13 draws one more where its fewshot split "equals" the test split
            # (HellaSwag: neither is set) and drops the item itself, should it be among them
            chosen = [p for p in rnd.sample(pool, shots + (task in DRAW_ONE_MORE)) if p != item][:shots]
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
    if not context:  # lm-eval's prefix_token_id: bos where the tokenizer has one (HFTokenizer), else end-of-text
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
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
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
            x[r, :len(ids)] = torch.tensor(ids)  # padded on the right: causal attention never sees it
        with autocast:
            logits = model(x.to(device))
        for r, ids in enumerate(batch):
            for i, cont in rows[ids]:  # the continuation's tokens are the targets of the last positions
                pos = torch.arange(max(0, len(ids) - len(cont)), len(ids))
                logp = F.log_softmax(logits[r, pos].double(), -1)
                out[i] = logp.gather(1, torch.tensor(cont[-len(pos):], device=logp.device)[:, None]).sum().item()
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
        hits_norm.append(float(np.argmax([v / len(c) for v, c in zip(scores, item.choices)]) == item.gold))
    return dict(acc=float(np.mean(hits)), acc_stderr=stderr(hits), acc_norm=float(np.mean(hits_norm)),
                acc_norm_stderr=stderr(hits_norm), n=len(items), shots=shots)


# -----------------------------------------------------------------------------
# memorization (Analysis360): a prompt of the training data, greedy, compare

@torch.no_grad()
def memorized(model, seqs, prompt=32, gen=32):
    """(exact-match rate, mean fraction of tokens reproduced) of greedy continuations of
    seqs[:, :prompt] against seqs[:, prompt:prompt + gen]."""
    x = torch.as_tensor(seqs, device=next(model.parameters()).device)[:, :prompt + gen]
    out = model.generate(x[:, :prompt], gen, temperature=0)[:, prompt:]
    same = (out == x[:, prompt:]).float()
    return (same.min(1).values.mean().item(), same.mean().item())


def trained_sequences(cfg, meta, n=64):
    """(steps, tokens (len(steps), seq_len + 1)): the first sequence of the global batch of n steps
    spread over the steps a checkpoint trained, as trained on (FIM included): what
    `python data.py show --ckpt CKPT --step S` prints first."""
    batches = data.Batches.from_config(cfg, meta["data_position"]["global_batch"])
    steps = sorted(set(np.linspace(0, max(meta["step"] - 1, 0), n).astype(int).tolist()))
    return steps, np.concatenate([batches.tokens(batches.sample_ids(s)[:1], s) for s in steps])


def memorization(model, cfg, meta, n=64, prompt=32, gen=32):
    """Memorization of n sequences the checkpoint trained on, and of n held-out ones as the baseline."""
    if cfg.seq_len + 1 < prompt + gen:
        prompt = gen = (cfg.seq_len + 1) // 2
    manifest = data.load_manifest(cfg.data_dir, verify=False)
    seen = trained_sequences(cfg, meta, n)[1]
    held = np.concatenate(list(data.val_sequences(cfg.data_dir, manifest, cfg.seq_len, n).values()))[:n]
    (e, f), (be, bf) = memorized(model, seen, prompt, gen), memorized(model, held, prompt, gen)
    return {"mem/exact": e, "mem/frac": f, "mem_heldout/exact": be, "mem_heldout/frac": bf}


# -----------------------------------------------------------------------------
# the sweep: every checkpoint of a run, appended to evals.jsonl, then a table and plots

def task_files(tasks_dir):
    """The task files of a folder (not their few-shot files)."""
    if not tasks_dir:
        return []
    if not os.path.isdir(tasks_dir):
        raise ConfigError(f"--tasks={tasks_dir}: no such folder")
    return [os.path.join(tasks_dir, f) for f in sorted(os.listdir(tasks_dir))
            if f.endswith(".jsonl") and not f.endswith((".dev.jsonl", ".train.jsonl"))]


def settings(tasks_dir, shots):
    """What a sweep row depends on besides the checkpoint: {task file: shots}."""
    return {os.path.basename(p)[:-6]: shots_of(p, shots) for p in task_files(tasks_dir)}


def evaluate_checkpoint(ckpt, tasks_dir, shots, seqs, device):
    """One row of the sweep: loss and bits per byte, tasks (with their shots), memorization."""
    model, cfg, enc, meta = load(ckpt, device)
    row = dict(ckpt=name_of(ckpt), step=meta["step"], tokens=meta["data_position"]["tokens"],
               tasks=settings(tasks_dir, shots))
    if cfg is not None:  # a Hugging Face folder has no run, so no held-out data or trained sequences
        row.update(loss_and_bpb(model, cfg, enc, seqs))
        row.update(document_bpb(model, cfg, enc, seqs or 64))
    for path in task_files(tasks_dir):
        name = os.path.basename(path)[:-6]
        r = run_task(model, enc, path, row["tasks"][name])
        row.update({f"{name}/{k}": r[k] for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")})
    if cfg is not None:
        row.update(memorization(model, cfg, meta, seqs or 64))
    return row


def sweep(path, tasks_dir, shots=None, seqs=0, device="cpu"):
    """Every checkpoint of a run (or the one given), each evaluated once per setting: a row of
    evals.jsonl is kept when its checkpoint, tasks and shots are the ones asked."""
    ckpts = checkpoints(path)
    run_dir = os.path.dirname(os.path.abspath(ckpts[0])) if len(ckpts) == 1 and path == ckpts[0] else path
    if not tasks_dir and is_hf(ckpts[0]):
        raise ConfigError(f"{path}: a Hugging Face model has no run data to measure loss on: give --tasks=FOLDER "
                          "(task files in the public formats, data/evals/README.md)")
    if not tasks_dir:
        print("no --tasks: loss, bits per byte and memorization only. Task files (HellaSwag, ARC, MMLU, C-Eval, "
              "CMMLU in their public formats, data/evals/README.md) go in a folder: --tasks=FOLDER", file=sys.stderr)
    want = settings(tasks_dir, shots)
    log = os.path.join(run_dir, "evals.jsonl")
    kept = lambda: [r for r in map(json.loads, open(log)) if r.get("tasks") == want] if os.path.exists(log) else []
    rows = kept()
    done = {r["ckpt"] for r in rows}
    # under torchrun the ranks split the checkpoints (one model per GPU); rank 0 writes the table
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and device == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    for ckpt in [c for c in ckpts if name_of(c) not in done][rank::world]:
        try:
            row = evaluate_checkpoint(ckpt, tasks_dir, shots, seqs, device)
        except CheckpointError as e:  # one damaged checkpoint does not stop a sweep over hundreds
            if len(ckpts) == 1:
                raise
            print(f"skipped {ckpt}: {e}", file=sys.stderr)
            continue
        print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "tasks"))
        with open(log, "a") as f:  # one write of one line: the ranks' rows never interleave
            f.write(json.dumps(row) + "\n")
        rows.append(row)
    if world > 1:  # only now a process group: loading a checkpoint verifies it with the group's ranks if one exists
        dist.init_process_group("gloo")
        dist.barrier()
        rows = kept()
        dist.destroy_process_group()
    rows.sort(key=lambda r: (r["step"] is None, r["step"] or 0, r["ckpt"]))
    if rank == 0:
        write_table(rows, run_dir)
    return rows


def write_table(rows, run_dir):
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "tasks"))  # tasks: the shots, said above the table
    with open(os.path.join(run_dir, "evals.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "" if v is None else str(v)
    shots = rows[0].get("tasks") if rows else None
    lines = ([f"shots per task: {', '.join(f'{k} {v}' for k, v in shots.items())}", ""] if shots else []) + \
        ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    open(os.path.join(run_dir, "evals.md"), "w").write("\n".join(lines) + "\n")
    print(f"wrote {run_dir}/evals.md and evals.csv ({len(rows)} checkpoints)")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(pip install matplotlib for evals.png: each metric against tokens trained)")
        return
    metrics = [k for k in keys if k not in ("ckpt", "step", "tokens") and not k.endswith("_stderr")]
    cols = 4
    fig, axes = plt.subplots(math.ceil(len(metrics) / cols), cols, figsize=(4 * cols, 3 * math.ceil(len(metrics) / cols)),
                             squeeze=False)
    # x: tokens trained; a released model's folders say only their step, if that
    x, label = next(((xs, name) for xs, name in (([r["tokens"] for r in rows], "tokens trained"),
                     ([r["step"] for r in rows], "step"), (list(range(len(rows))), "checkpoint")) if None not in xs))
    for ax, k in zip(axes.flat, metrics):
        ax.plot(x, [r.get(k, float("nan")) for r in rows], marker="o")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel(label, fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(run_dir, "evals.png"), dpi=80)
    print(f"wrote {run_dir}/evals.png")


# -----------------------------------------------------------------------------
# Hugging Face Llama format: export (config.json, model.safetensors, and tokenizer.json from
# our .tiktoken) and import (our state dict and ModelConfig). One name map serves both ways,
# so they cannot drift apart.

def check_llama(cfg):
    # what Llama cannot express, all reported at once, each naming its config key
    bad = [(cfg.norm == "layernorm", "norm='layernorm' (LayerNorm has a bias; Llama uses RMSNorm)"),
           (cfg.rotary_dim != cfg.head_dim, f"rotary_dim={cfg.rotary_dim} < head_dim={cfg.head_dim} (partial rotary)"),
           (cfg.embed_mult != 1.0, f"embed_mult={cfg.embed_mult} (muP embedding multiplier)"),
           (cfg.logit_mult != 1.0, f"logit_mult={cfg.logit_mult} (muP logit multiplier)"),
           (cfg.qk_scale_by_d, "qk_scale_by_d=True (muP 1/head_dim attention scale)"),
           (cfg.qkv_bias != cfg.attn_out_bias, f"qkv_bias={cfg.qkv_bias} with attn_out_bias={cfg.attn_out_bias} "
            "(HF's attention_bias covers q, k, v and o together)")]
    msgs = [msg for is_bad, msg in bad if is_bad]
    if msgs:
        raise ValueError("cannot express this model as Hugging Face Llama: " + "; ".join(msgs))


def name_map(cfg):
    """(our name, [HF names], row sizes to split ours into) for every tensor; sizes None: one to one."""
    q, kv, f = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.ffn_hidden
    m = [("embed.weight", ["model.embed_tokens.weight"], None), ("norm.weight", ["model.norm.weight"], None)]
    if not cfg.tie_embeddings:
        m.append(("lm_head.weight", ["lm_head.weight"], None))
    for i in range(cfg.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        m += [(b + "norm1.weight", [h + "input_layernorm.weight"], None),
              (b + "norm2.weight", [h + "post_attention_layernorm.weight"], None)]
        for s in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            m += [(b + "attn.qkv." + s, [h + f"self_attn.{x}_proj." + s for x in "qkv"], [q, kv, kv]),
                  (b + "attn.out." + s, [h + "self_attn.o_proj." + s], None)]
        for s in ("weight", "bias") if cfg.ffn_bias else ("weight",):
            m += [(b + "mlp.up." + s, [h + "mlp.gate_proj." + s, h + "mlp.up_proj." + s], [f, f]),
                  (b + "mlp.down." + s, [h + "mlp.down_proj." + s], None)]
    return m


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError("Hugging Face export/import needs safetensors: pip install safetensors") from None
    return safetensors.torch


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)


# -----------------------------------------------------------------------------
# tokenizer: our .tiktoken as a tokenizers byte-level BPE

def bpe_parts(ranks, token, max_rank):
    # tiktoken's BPE on token's bytes using only ranks below max_rank: lowest-ranked pair first
    parts = [bytes([b]) for b in token]
    while True:
        pairs = [(ranks.get(parts[i] + parts[i + 1], max_rank), i) for i in range(len(parts) - 1)]
        rank, i = min(pairs, default=(max_rank, 0))
        if rank >= max_rank:
            return parts
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def export_tokenizer(ranks, pat, specials, out_dir):
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; False (with a note) when
    the tokenizer cannot be expressed."""
    try:
        from tokenizers import Regex
        Regex(pat)  # onig (tokenizers' regex engine) must take our pattern, possessive quantifiers included
    except ImportError:
        pass  # cannot check here: onig has long accepted ?+ and ++
    except Exception as e:
        print(f"note: no tokenizer.json written: tokenizers' regex engine rejects pat_str {pat!r}: {e}")
        return False
    u = data.byte_to_unicode()
    text = lambda b: "".join(u[x] for x in b)
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda x: x[1]):
        if len(token) >= 2:
            parts = bpe_parts(ranks, token, rank)
            if len(parts) != 2:  # not a BPE vocabulary: a token no merge of lower ranks can build
                print(f"note: no tokenizer.json written: token {token!r} (rank {rank}) is not a merge of two lower ranks")
                return False
            merges.append(f"{text(parts[0])} {text(parts[1])}")  # byte-level text has no spaces: ' ' is 'Ġ'
    added = [dict(id=i, content=s, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
             for s, i in specials.items()]
    _write_json(os.path.join(out_dir, "tokenizer.json"), {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pat}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,  # nothing added around the text, like tiktoken's encode_ordinary
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        # ignore_merges: a piece that is a whole token is that token, as in tiktoken
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {text(t): r for t, r in ranks.items()}, "merges": merges}})
    names = {k: v for k, v in dict(eos_token="<|endoftext|>", pad_token="<|pad|>").items() if v in specials}
    _write_json(os.path.join(out_dir, "tokenizer_config.json"), dict(
        tokenizer_class="PreTrainedTokenizerFast", clean_up_tokenization_spaces=False, **names))
    _write_json(os.path.join(out_dir, "special_tokens_map.json"), names)
    return True


# -----------------------------------------------------------------------------
# export and import

def export_llama(model, out_dir, tokenizer_path=None):
    """Write model (a GPT) to out_dir in the Hugging Face Llama format, float32."""
    cfg = model.cfg
    check_llama(cfg)
    if cfg.d_model % cfg.n_head:  # valid Llama, but transformers 5's config validation refuses it
        print(f"note: transformers 5 will not load this: hidden_size={cfg.d_model} is not a multiple of "
              f"num_attention_heads={cfg.n_head} (transformers 4 does)")
    specials, released = {}, tokenizer_path and tokenizer_path.endswith(".json")
    if released:  # a run trained with a released tokenizer.json: that file goes along as it is
        enc = data.load_tokenizer(tokenizer_path)
        n, specials = enc.n_vocab, {"<|endoftext|>": enc.eot_token, "<s>": enc.prefix_token}
    elif tokenizer_path:
        ranks, pat, specials = data.read_tiktoken(tokenizer_path)
        n = len(ranks) + len(specials)
    if tokenizer_path and n > cfg.vocab_size:
        raise ValueError(f"tokenizer has {n} tokens, more than vocab_size={cfg.vocab_size}")
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    tensors = {}
    for ours, names, sizes in name_map(cfg):
        parts = sd.pop(ours).split(sizes) if sizes else [sd.pop(ours)]
        tensors.update((n, p.clone().contiguous()) for n, p in zip(names, parts))  # own storage: safetensors wants no sharing
    if sd:
        raise ValueError(f"tensors with no Llama name: {sorted(sd)}")
    _safetensors().save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    eot, pad, bos = specials.get("<|endoftext|>"), specials.get("<|pad|>"), specials.get("<s>", specials.get("<|endoftext|>"))
    _write_json(os.path.join(out_dir, "config.json"), dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        # rope_theta for transformers 4, rope_parameters for 5 (which also reads the former)
        rope_theta=float(cfg.rope_theta), rope_parameters=dict(rope_type="default", rope_theta=float(cfg.rope_theta)),
        rope_scaling=None, tie_word_embeddings=cfg.tie_embeddings, attention_bias=cfg.qkv_bias,
        mlp_bias=cfg.ffn_bias, attention_dropout=0.0, initializer_range=cfg.init_std,
        # bos: end-of-text, which ends every document and so begins the next (a released tokenizer: its own)
        bos_token_id=bos, eos_token_id=eot, pad_token_id=pad, torch_dtype="float32", dtype="float32", use_cache=True))
    gen = dict(bos_token_id=bos, eos_token_id=eot, pad_token_id=pad)
    _write_json(os.path.join(out_dir, "generation_config.json"), {k: v for k, v in gen.items() if v is not None})
    if released:
        shutil.copy(tokenizer_path, os.path.join(out_dir, "tokenizer.json"))
        names = {f"{k}_token": enc.tok.id_to_token(i) for k, i in (("eos", eot), ("bos", bos))}
        _write_json(os.path.join(out_dir, "tokenizer_config.json"), dict(tokenizer_class="PreTrainedTokenizerFast", **names))
    elif tokenizer_path:
        export_tokenizer(ranks, pat, specials, out_dir)


def config_from_hf(c):
    """A ModelConfig from a Llama config.json dict; refuses what our model cannot run."""
    if c.get("model_type") != "llama":
        raise ValueError(f"model_type={c.get('model_type')!r}: only 'llama' can be imported")
    rope = c.get("rope_parameters") or {}
    if c.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_scaling={c.get('rope_scaling') or rope!r}: scaled rotary embeddings are not supported")
    if c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={c['hidden_act']!r}: only 'silu' (SwiGLU) is supported")
    n_head, bias = c["num_attention_heads"], c.get("attention_bias", False)
    return ModelConfig(
        vocab_size=c["vocab_size"], n_layer=c["num_hidden_layers"], d_model=c["hidden_size"], n_head=n_head,
        n_kv_head=c.get("num_key_value_heads") or n_head, head_dim=c.get("head_dim") or c["hidden_size"] // n_head,
        ffn_hidden=c["intermediate_size"], max_seq_len=c["max_position_embeddings"], norm="rmsnorm",
        norm_eps=c.get("rms_norm_eps", 1e-6), rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
        tie_embeddings=c.get("tie_word_embeddings", False), qkv_bias=bias, attn_out_bias=bias,
        ffn_bias=c.get("mlp_bias", False))


def import_llama(hf_dir):
    """(state dict, ModelConfig) of the Llama checkpoint in hf_dir (model.safetensors, or shards with an index)."""
    cfg = config_from_hf(json.load(open(os.path.join(hf_dir, "config.json"))))
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    files = sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index) else ["model.safetensors"]
    hf = {}
    for f in files:
        hf.update(_safetensors().load_file(os.path.join(hf_dir, f)))
    sd = {}
    for ours, names, _ in name_map(cfg):
        missing = [n for n in names if n not in hf]
        if missing:
            raise ValueError(f"{hf_dir}: checkpoint lacks {missing}")
        sd[ours] = torch.cat([hf.pop(n) for n in names]) if len(names) > 1 else hf.pop(names[0])
    hf.pop("lm_head.weight", None)  # a tied checkpoint may store the embedding twice
    extra = [n for n in hf if "rotary_emb.inv_freq" not in n]  # old checkpoints saved the rope buffer
    if extra:
        raise ValueError(f"{hf_dir}: tensors our model has no place for: {extra[:5]}")
    return sd, cfg


# -----------------------------------------------------------------------------
# command line

def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv.pop(0) if argv and argv[0] in ("sample", "export", "import") else "sweep"
    ap = argparse.ArgumentParser(prog=f"eval.py {cmd}", description=__doc__.split("\n\n")[0])
    ap.add_argument("path", nargs="?", default=os.path.join("out", "toy"))
    ap.add_argument("out", nargs="?")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tasks", default="", help="a folder of task files (data/evals/ has a few hand-made items)")
    ap.add_argument("--shots", type=int, default=None, help="shots per task (default: the published count where "
                    "the task's few-shot file exists, else 0)")
    ap.add_argument("--seqs", type=int, default=0, help="held-out sequences per source (default: the run's eval_seqs) "
                    "and memorization sequences (default 64)")
    ap.add_argument("--prompt", default="Alice was beginning to")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top_k", type=int, default=50)
    ap.add_argument("--top_p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if cmd == "sweep":
        sweep(args.path, args.tasks, args.shots, args.seqs, args.device)
    elif cmd == "sample":
        model, _, enc, _ = load(checkpoints(args.path)[-1], args.device)
        gen = torch.Generator(device=args.device).manual_seed(args.seed)
        print(args.prompt, end="", flush=True)
        for piece in sample_text(model, enc, args.prompt, args.tokens, args.temperature, args.top_k, args.top_p, gen):
            print(piece, end="", flush=True)
        print()
    elif cmd == "export":
        if not args.out:
            raise ConfigError("export needs CKPT_DIR OUT_DIR")
        model, cfg, _, _ = load(checkpoints(args.path)[-1], "cpu")
        if cfg is None:
            raise ConfigError(f"{args.path}: already a Hugging Face model")
        manifest = data.load_manifest(cfg.data_dir, verify=False)
        tok = os.path.join(cfg.data_dir, manifest["tokenizer"]) if manifest["tokenizer"].endswith((".tiktoken", ".json")) else None
        export_llama(model, args.out, tok)
    else:
        if not args.out:
            raise ConfigError("import needs HF_DIR OUT.pt")
        state, mcfg = import_llama(args.path)
        torch.save(dict(model=state, config=vars(mcfg)), args.out)
        print(f"wrote {args.out}: {sum(t.numel() for t in state.values()):,} parameters. Train from it with "
              f"--init_from={args.out} and a config holding these lines:")
        print("\n".join(f"{k} = {v!r}" for k, v in vars(mcfg).items()))
    return 0


if __name__ == "__main__":
    run_command(main, data.DataError, ValueError)
