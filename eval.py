"""
Everything done with a checkpoint: loss and bits per byte per source, multiple-choice tasks
(tasks.py), memorization of the training data, a sweep over every checkpoint of a run,
sampling, Hugging Face folders both ways (hf_llama.py), and the run's training curves (plots.py).

    python eval.py [sweep] [OUT_DIR | CKPT] [--tasks=DIR] [--shots=K] [--seqs=N]
                                                evals.jsonl, .md, .csv, .png
                   [--contamination=DOCS_DIR]   each acc also on the items that no training
                                                document holds (decont.py)
    python eval.py [sweep] HF_DIR --tasks=DIR   a Hugging Face Llama folder (results in
                                                HF_DIR.evals/), or a folder of them (a released
                                                model's intermediate checkpoints), with its
                                                tokenizer.json
    python eval.py [sweep] RELEASE_DIR --shards=DIR [--tasks=DIR]
                                                a nano360 release (release.py) with the token
                                                shards it names: the rows its run/evals.jsonl
                                                holds, from the release alone (RELEASE_DIR.evals/)
    python eval.py plot OUT_DIR                 OUT_DIR/curves.png: the run's metrics.jsonl
    python eval.py sample CKPT --prompt="子曰：" [--temperature=0.8 --top_k=50 --top_p=0.95
            --seed=0 --tokens=128]
    python eval.py export CKPT OUT_DIR          a Hugging Face folder (Llama, or nano360's layout):
                                                config.json, model.safetensors, tokenizer
    python eval.py import HF_DIR OUT.pt         such a folder as our state dict
                                                (train.py --init_from=OUT.pt)

`python eval.py COMMAND --help` lists each command's options.
"""
import argparse, csv, json, math, os, sys

import numpy as np
import torch
import torch.distributed as dist

import decont
import plots
from checkpoint import Checkpointer, CheckpointError, empty_model, load_model, step_of
from config import ConfigError, place, run_command, uses_bf16
from data import Batches, load_manifest, read_shard, release_run, val_sequences
from gentasks import CODE, check_generation, gen_prompts, run_generative
from hf_llama import export_llama, hf_weights, import_llama, llama_gaps
from model import autocast, sample_text, validation_loss
from stage import DataError, is_done, sha256_file
from suites import sampling_of, suite_of, suite_table, task_files
from tasks import GENERATIVE, loglikelihoods, run_task, shots_file, shots_of, task_of, task_prompts
from tokenizer import check_tokenizer, load_tokenizer, special_ids, tokenizer_of


# -----------------------------------------------------------------------------
# checkpoints

def is_hf(path):
    """A Hugging Face model folder: config.json and safetensors weights (a released model)."""
    weights = ("model.safetensors", "model.safetensors.index.json")
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.exists(os.path.join(path, f)) for f in weights)


def name_of(ckpt):
    return os.path.basename(os.path.abspath(ckpt))  # abspath: "." has a name too


def load(ckpt, device="cpu", shards=None):
    """(model, train config, tokenizer, meta) of a checkpoint written at any world size, or of a
    Hugging Face Llama folder (train config None; its tokenizer.json there or in the folder
    above, which may hold a released model's intermediate checkpoints). shards: a nano360
    release's token shards; a checkpoint folder of that release (its nano360.json) then comes
    with its run's config, reading its data from shards, as its out_dir's checkpoint would."""
    if not is_hf(ckpt):
        model, cfg, meta = load_model(ckpt, device)
        manifest = load_manifest(cfg.tokens_dir, hash_shards=False)
        enc = tokenizer_of(cfg.tokens_dir, manifest)
        # the tokenizer the checkpoint trained with (its meta says, from train.py's save on)
        check_tokenizer(cfg.tokens_dir, manifest, meta.get("tokenizer_sha256"), ckpt)
        return model, cfg, enc, meta
    up = os.path.dirname(os.path.abspath(ckpt))
    where = [d for d in (ckpt, up) if os.path.isfile(os.path.join(d, "tokenizer.json"))]
    if not where:
        raise ConfigError(f"{ckpt}: no tokenizer.json in it or in {up}")
    enc = load_tokenizer(where[0])
    state, mcfg = import_llama(ckpt)
    if enc.n_vocab > mcfg.vocab_size:
        raise ConfigError(f"{where[0]}/tokenizer.json has {enc.n_vocab} tokens, more than {ckpt}'s "
                          f"vocab_size={mcfg.vocab_size}")
    model = empty_model(mcfg, device)
    model.load_state_dict(state)
    run = os.path.join(ckpt, "nano360.json")
    if shards and os.path.isfile(run):
        cfg, meta, manifest = release_run(ckpt, shards)
        check_tokenizer(shards, manifest, meta.get("tokenizer_sha256"), ckpt)
        return model.eval(), cfg, tokenizer_of(shards, manifest), meta
    return model.eval(), None, enc, dict(step=step_of(ckpt), data_position=dict(tokens=None))


def is_release(path):
    return os.path.isfile(os.path.join(path, "SHA256SUMS")) and os.path.isdir(
        os.path.join(path, "checkpoints"))


def checkpoints(path):
    """Every complete checkpoint of a run (oldest first), or the one given; or the Hugging Face
    folder given, or every one in the folder given, in the order of the numbers they end in."""
    if is_release(path):  # its checkpoints (model/ is the last of them again); DONE: whole
        path = os.path.join(path, "checkpoints")
    elif is_done(path) or is_hf(path):
        return [path]
    found = Checkpointer.complete(path)
    if not found and os.path.isdir(path):
        found = [os.path.join(path, d) for d in os.listdir(path) if is_hf(os.path.join(path, d))]
        found.sort(key=lambda p: (step_of(p) is None, step_of(p) or 0, p))
    if not found and os.path.isfile(os.path.join(path, "config.json")):
        hf_weights(path)  # a Hugging Face folder without safetensors: says why it is not read
    if not found:
        raise ConfigError(f"{path}: no complete checkpoint (a ckpt_* folder with DONE) and no "
                          "Hugging Face model folder (config.json + model.safetensors) there")
    return found


# -----------------------------------------------------------------------------
# loss and bits per byte

def loss_and_bpb(model, cfg, enc, max_seqs=0):
    """Per source of the held-out split: the mean loss per token (nats), computed as the run's own
    validation computes it (model.validation_loss: the same sequences, batch size, document mask and
    dtype), and bits per byte on those packed windows (bpb_window: the loss of the windows' text
    in bits over its UTF-8 bytes; end-of-text is predicted and counts 0 bytes, each window's first
    token is unscored), the run's own figure. document_bpb is lm-eval's. max_seqs: sequences
    per source (0: the run's eval_seqs)."""
    manifest = load_manifest(cfg.tokens_dir, hash_shards=False)
    val = val_sequences(cfg.tokens_dir, manifest, cfg.seq_len, max_seqs or cfg.eval_seqs)
    device = next(model.parameters()).device
    losses = validation_loss(model, val, cfg.batch_size, device,
                             autocast(device, uses_bf16(cfg, device.type)),
                             manifest["eot"] if cfg.doc_mask else None)
    special = special_ids(enc)
    out, nats, nbytes = {}, 0.0, 0
    for source, seqs in val.items():
        b = sum(len(enc.decode_bytes([t for t in row if t not in special]))
                for row in seqs[:, 1:].tolist())
        # the source's loss in nats, summed over its tokens
        n = losses[source] * seqs[:, 1:].size
        out[f"loss/{source}"] = losses[source]
        out[f"bpb_window/{source}"] = n / math.log(2) / max(b, 1)
        nats, nbytes = nats + n, nbytes + b
    out["loss/all"], out["bpb_window/all"] = losses["all"], nats / math.log(2) / max(nbytes, 1)
    return out


def held_out_documents(cfg, manifest, max_docs=0):
    """{source: [token lists]}: the val split cut at end-of-text, each piece a document (the first
    may be the tail of one that the split cut)."""
    out = {}
    for s in manifest["shards"]:
        if s["split"] == "val":
            t = read_shard(os.path.join(cfg.tokens_dir, s["file"])).tolist()
            cuts = [-1] + [i for i, x in enumerate(t) if x == manifest["eot"]] + [len(t)]
            out.setdefault(s["source"], []).extend(t[a + 1:b] for a, b in zip(cuts, cuts[1:])
                                                   if b > a + 1)
    return {k: v[:max_docs or None] for k, v in out.items()}


def document_bpb(model, cfg, enc, max_docs=0, batch_size=16):
    """Bits per byte as lm-eval's loglikelihood_rolling defines it: whole documents, the first
    token predicted after end-of-text, the rest in windows of the model's length each seeing
    one token before it, no end-of-text predicted; nats over ln 2 over the text's UTF-8 bytes."""
    manifest = load_manifest(cfg.tokens_dir, hash_shards=False)
    L, out, nats_all, bytes_all = model.cfg.max_seq_len, {}, 0.0, 0
    special = special_ids(enc)  # a released tokenizer's <s>: 0 bytes
    for source, docs in held_out_documents(cfg, manifest, max_docs).items():
        requests = [([enc.eot_token] if a == 0 else [doc[a - 1]], doc[a:a + L])
                    for doc in docs for a in range(0, len(doc), L)]
        nats = -sum(loglikelihoods(model, requests, batch_size, desc=f"bpb {source}"))
        nbytes = sum(len(enc.decode_bytes([t for t in doc if t not in special])) for doc in docs)
        out[f"bpb_doc/{source}"] = nats / math.log(2) / max(nbytes, 1)
        nats_all, bytes_all = nats_all + nats, bytes_all + nbytes
    out["bpb_doc/all"] = nats_all / math.log(2) / max(bytes_all, 1)
    return out


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
    batches = Batches.from_config(cfg, meta["data_position"]["global_batch"])
    steps = sorted(set(np.linspace(0, max(meta["step"] - 1, 0), n).astype(int).tolist()))
    return steps, np.concatenate([batches.tokens(batches.sample_ids(s)[:1], s) for s in steps])


def memorization(model, cfg, meta, n=64, prompt=32, gen=32):
    """Memorization of n sequences the checkpoint trained on, and of n held-out ones as the
    baseline."""
    if cfg.seq_len + 1 < prompt + gen:
        prompt = gen = (cfg.seq_len + 1) // 2
    manifest = load_manifest(cfg.tokens_dir, hash_shards=False)
    seen = trained_sequences(cfg, meta, n)[1]
    held = np.concatenate(list(
        val_sequences(cfg.tokens_dir, manifest, cfg.seq_len, n).values()))[:n]
    (e, f), (be, bf) = memorized(model, seen, prompt, gen), memorized(model, held, prompt, gen)
    return {"mem/exact": e, "mem/frac": f, "mem_heldout/exact": be, "mem_heldout/frac": bf}


# -----------------------------------------------------------------------------
# the sweep: every checkpoint of a run, appended to evals.jsonl, then a table and plots

def settings(files, shots):
    """What a sweep row depends on besides the checkpoint: {task file: shots}."""
    return {os.path.basename(p)[:-6]: shots_of(p, shots) for p in files}


def generation(files, tasks_dir, samples=None, temperature=None, max_gen_toks=None):
    """{task file: how it generates} of the generative tasks: the flags', else the suite's
    (CrystalCoder's temperatures), else greedy with lm-eval's budget (max_gen_toks None)."""
    out = {}
    for p in files:
        if task_of(p) in GENERATIVE:
            suite = sampling_of(tasks_dir, task_of(p))
            out[os.path.basename(p)[:-6]] = how = dict(
                samples=suite.get("samples", 1) if samples is None else samples,
                temperature=suite.get("temperature", 0.0) if temperature is None else temperature,
                max_gen_toks=max_gen_toks)
            check_generation(**how)  # before a model is loaded
    return out


def task_sha256(files, shots):
    """{file: sha256} of the task files a sweep reads, with the few-shot file of each task that
    gets shots: a row's scores are those of these bytes, whatever the files are named."""
    out = {}
    for path in files:
        used = [path, shots_file(path)] if shots_of(path, shots) and shots_file(path) else [path]
        if not os.path.exists(used[-1]):
            raise DataError(f"{used[-1]}: not there, and {path} is asked {shots} shots from it "
                            "(--shots=0, or put the few-shot items there)")
        out.update((os.path.basename(p), sha256_file(p)) for p in used)
    return out


def evaluate_checkpoint(ckpt, files, shots, seqs, device, gen=None, dirty=None, shards=None):
    """One row of the sweep: loss and bits per byte, tasks (with their shots; gen: how the
    generative ones generate; dirty: {task file: lines of the items found in training
    documents}, scored apart), memorization. shards: a release's (load)."""
    model, cfg, enc, meta = load(ckpt, device, shards)
    row = dict(ckpt=name_of(ckpt), step=meta["step"], tokens=meta["data_position"]["tokens"],
               tasks=settings(files, shots), task_sha256=task_sha256(files, shots))
    if gen:
        row["generation"] = gen
    # a Hugging Face folder has no run, so no held-out data or trained sequences
    if cfg is not None:
        row.update(loss_and_bpb(model, cfg, enc, seqs))
        row.update(document_bpb(model, cfg, enc, seqs or 64))
    for path in files:
        name = os.path.basename(path)[:-6]
        mine = None if dirty is None else set(dirty.get(os.path.basename(path), []))
        r = (run_generative(model, enc, path, row["tasks"][name], unsafe=True, dirty=mine,
                            **gen[name])
             if name in (gen or {}) else run_task(model, enc, path, row["tasks"][name],
                                                  dirty=mine))
        # each task's own metrics (acc, acc_norm, pct_stereotype, exact_match_*, pass@k, ...)
        row.update({f"{name}/{k}": v for k, v in r.items() if k not in ("n", "shots")})
    if cfg is not None:
        row.update(memorization(model, cfg, meta, seqs or 64))
    return row


def by_step(row):
    return (row["step"] is None, row["step"] or 0, row["ckpt"])


def read_evals(log, note=True, rewrite=False):
    """The rows of an evals.jsonl. A line that is not a JSON row (a sweep killed mid-write) is
    left out, with a note; with rewrite, the file is written again without it, its rows in the
    order of their steps (ranks append theirs as they finish: the file's bytes are the same)."""
    if not os.path.exists(log):
        return []
    rows, torn = plots.read_jsonl(log, lambda row: "ckpt" in row)
    if torn and note:
        print(f"note: {log}: line{'s' * (len(torn) > 1)} {', '.join(torn)} not JSON, left out "
              "(written when a sweep was killed)", file=sys.stderr)
    order = sorted(rows, key=by_step)  # stable: one checkpoint's rows keep their order
    if rewrite and (torn or order != rows):
        rows = order
        with open(log + ".part", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(log + ".part", log)
    return rows


def append_row(log, row):
    """row as the last line of log, in one write (the ranks' rows never interleave), on a line
    of its own after a torn one (a killed sweep leaves its last line without an end)."""
    with open(log, "ab+") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(end - 1)
        gap = b"\n" if end and f.read(1) != b"\n" else b""
        f.write(gap + (json.dumps(row) + "\n").encode())  # appended, wherever it has read


def sweep(path, tasks_dir, shots=None, seqs=0, device="cpu", unsafe=False, samples=None,
          temperature=None, max_gen_toks=None, contamination=None, shards=None):
    """Every checkpoint of a run (or the one given), each evaluated once per setting: a row of
    evals.jsonl is kept when its checkpoint, task files (their sha256), shots and generation
    are the ones asked. The code tasks (HumanEval, MBPP) run the model's code: only with
    unsafe (--confirm_run_unsafe_code), else they are left out with a note. contamination: a
    folder of the documents the run trained on; the items they hold (decont.found_in) are
    scored apart: each multiple-choice acc also on the clean items (acc_clean, n_clean).
    shards: a release's token shards (path a release): loss, bits per byte and memorization as
    its run measured them."""
    ckpts = checkpoints(path)
    if not tasks_dir and is_hf(ckpts[0]) and not (shards and is_release(path)):
        raise ConfigError(f"{path}: a Hugging Face model has no run data to measure loss on: give "
                          "--tasks=FOLDER (task files in the public formats, data/evals/README.md)")
    # where the table goes: a run's folder (a checkpoint's run); one Hugging Face folder has
    # no run, and a table inside it would change the model's folder: NAME.evals beside it
    if is_hf(path) or is_release(path):  # nothing written into a release: its sums hold
        here = os.path.basename(os.path.normpath(path)) in (".", "..")  # no name to put .evals on
        run_dir = (os.path.abspath(path) if here else os.path.normpath(path)) + ".evals"
        os.makedirs(run_dir, exist_ok=True)
    elif len(ckpts) == 1 and path == ckpts[0]:
        run_dir = os.path.dirname(os.path.abspath(ckpts[0]))
    else:
        run_dir = path
    if not tasks_dir and place()[0] == 0:
        print("no --tasks: loss, bits per byte and memorization only. Task files (HellaSwag, ARC, "
              "MMLU, C-Eval, CMMLU in their public formats, data/evals/README.md) go in a folder: "
              "--tasks=FOLDER", file=sys.stderr)
    files = task_files(tasks_dir)
    code = [os.path.basename(f) for f in files if task_of(f) in CODE]
    if code and not unsafe:  # said at the end, beside the table that lacks them
        files = [f for f in files if task_of(f) not in CODE]
    gen = generation(files, tasks_dir, samples, temperature, max_gen_toks)
    dirty = None
    if contamination:  # once for the sweep: the documents streamed against the items' n-grams
        if not files:
            raise ConfigError("--contamination needs --tasks: the items to look for")
        dirty = decont.found_in(contamination, os.path.dirname(files[0]))
        for file in files:
            n = len(dirty.get(os.path.basename(file), []))
            print(f"{os.path.basename(file)}: {n} items found in {contamination}", file=sys.stderr)
    want = dict(tasks=settings(files, shots), task_sha256=task_sha256(files, shots),
                **({"generation": gen} if gen else {}),
                **({"contamination": dirty} if dirty is not None else {}))
    for file in files:  # a bad task file is said before a model is loaded
        (gen_prompts if task_of(file) in GENERATIVE else task_prompts)(file, shots_of(file, shots))
    log = os.path.join(run_dir, "evals.jsonl")
    # under torchrun the ranks split the checkpoints (one model per GPU); rank 0 writes the table
    rank, world, local = place()

    def kept(**how):  # a row from before the files' sha256 were recorded is computed again;
        # --seqs is said in a row only when given (0: the run's eval_seqs, and 64 documents)
        return [r for r in read_evals(log, **how)
                if {k: r.get(k) for k in want} == want and r.get("seqs", 0) == seqs]
    done = {r["ckpt"] for r in kept(note=rank == 0)}
    if world > 1 and device == "cuda":
        device = f"cuda:{local}"
    for ckpt in [c for c in ckpts if name_of(c) not in done][rank::world]:
        try:
            row = evaluate_checkpoint(ckpt, files, shots, seqs, device, gen, dirty, shards)
            if dirty is not None:
                row["contamination"] = dirty
            if seqs:
                row["seqs"] = seqs
        except CheckpointError as e:  # one damaged checkpoint does not stop a sweep over hundreds
            if len(ckpts) == 1:
                raise
            print(f"skipped {ckpt}: {e}", file=sys.stderr)
            continue
        print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in row.items()
                         if k not in ("tasks", "task_sha256", "generation", "contamination")))
        append_row(log, row)
    # only now a process group: loading a checkpoint verifies it with the group's ranks
    # if one exists
    if world > 1:
        dist.init_process_group("gloo")
        dist.barrier()
    # every rank's rows; rank 0 writes the file again without a torn line, once all are in
    rows = kept(note=False, rewrite=rank == 0)
    if world > 1:
        dist.destroy_process_group()
    rows.sort(key=by_step)
    if rank == 0:
        write_table(rows, run_dir)
        if tasks_dir and suite_of(tasks_dir)[0] and rows:  # the newest beside the seed's table
            print(f"{rows[-1]['ckpt']} beside the published figures:\n"
                  + suite_table(tasks_dir, rows[-1]))
        if code and not unsafe:
            print(f"note: {', '.join(code)} left out: {'they run' if len(code) > 1 else 'it runs'} "
                  "the code the model writes, which only --confirm_run_unsafe_code allows (then "
                  "each program runs in sandbox.py's containment)", file=sys.stderr)
    return rows


def write_table(rows, run_dir):
    # tasks: the shots, said above the table; the task files' sha256 stay in evals.jsonl
    rows = [{k: v for k, v in r.items() if k not in ("task_sha256", "generation", "contamination")}
            for r in rows]
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "tasks"))
    with open(os.path.join(run_dir, "evals.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}"
        return "" if v is None else str(v)
    shots = rows[0].get("tasks") if rows else None
    lines = (([f"shots per task: {', '.join(f'{k} {v}' for k, v in shots.items())}", ""]
              if shots else [])
             + ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)])
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    open(os.path.join(run_dir, "evals.md"), "w").write("\n".join(lines) + "\n")
    print(f"wrote {run_dir}/evals.md and evals.csv ({len(rows)} checkpoints)")
    plots.evals(rows, run_dir)


# -----------------------------------------------------------------------------
# command line: one subcommand each; no subcommand is the sweep

def parser():
    """One subcommand each: sweep, sample, export, import, plot."""
    ap = argparse.ArgumentParser(prog="eval.py", description=__doc__.split("\n\n")[0].strip(),
                                 epilog="Without a command, eval.py runs `sweep`.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sw = sub.add_parser("sweep", help="every checkpoint of a run (or one, or HF folders): "
                        "evals.jsonl, .md, .csv")
    sw.add_argument("path", nargs="?", default=os.path.join("out", "toy"),
                    help="a run, a checkpoint or an HF folder")
    sw.add_argument("--tasks", default="",
                    help="a folder of task files (data/evals/ has a few hand-made items), or a seed's table: amber (its tasks in data/evals) or amber:FOLDER")
    sw.add_argument("--shots", type=int, default=None,
                    help="shots per task (default: the published count where the task's few-shot "
                    "file is, else 0; TruthfulQA 0 always, as lm-eval pins it)")
    sw.add_argument("--seqs", type=int, default=0,
                    help="held-out sequences per source (default: the run's eval_seqs) and "
                    "memorization sequences (default 64)")
    sw.add_argument("--confirm_run_unsafe_code", action="store_true",
                    help="score HumanEval and MBPP, which run the code the model writes (each "
                    "program in sandbox.py's containment); without it they are left out")
    sw.add_argument("--samples", type=int, default=None,
                    help="generations per item of a generative task (pass@k from n; default 1, "
                    "or the suite's)")
    sw.add_argument("--temperature", type=float, default=None,
                    help="of the generative tasks (default 0: greedy, or the suite's)")
    sw.add_argument("--max_gen_toks", type=int, default=None,
                    help="new tokens at most (default lm-eval's: GSM8K, MBPP 256, HumanEval 1024)")
    sw.add_argument("--contamination", default=None, metavar="DOCS_DIR",
                    help="the documents the run trained on: the task items they hold (long "
                    "n-grams, decont.py) are scored apart, each acc also on the clean items")
    sw.add_argument("--shards", default=None, metavar="DIR",
                    help="with a release (release.py): the token shards it names, its run's "
                    "loss, bits per byte and memorization measured on them")
    sw.add_argument("--device", default=device)
    sa = sub.add_parser("sample",
                        help="text sampled from the newest checkpoint of a run (or the one given)")
    sa.add_argument("path", nargs="?", default=os.path.join("out", "toy"))
    sa.add_argument("--prompt", default="Alice was beginning to")
    sa.add_argument("--tokens", type=int, default=128)
    sa.add_argument("--temperature", type=float, default=0.8)
    sa.add_argument("--top_k", type=int, default=50)
    sa.add_argument("--top_p", type=float, default=0.95)
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--device", default=device)
    ex = sub.add_parser("export", help="a checkpoint as a Hugging Face folder (Llama, or "
                        "nano360's layout where Llama cannot express it)")
    ex.add_argument("path", help="a checkpoint, or a run (its newest)")
    ex.add_argument("out", help="the folder to write")
    im = sub.add_parser("import",
                        help="a Hugging Face folder as our state dict (for --init_from)")
    im.add_argument("path", help="the Hugging Face folder")
    im.add_argument("out", help="the .pt file to write")
    pl = sub.add_parser("plot", help="a run's training curves: RUN_DIR/curves.png from its "
                        "metrics.jsonl (needs matplotlib)")
    pl.add_argument("path", nargs="?", default=os.path.join("out", "toy"), help="a run's out_dir")
    pl.add_argument("--out", default=None, help="the png to write (default RUN_DIR/curves.png)")
    return ap


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("sweep", "sample", "export", "import", "plot", "-h",
                                   "--help"):
        argv.insert(0, "sweep")
    args = parser().parse_args(argv)
    if args.cmd == "sweep":
        sweep(args.path, args.tasks, args.shots, args.seqs, args.device,
              args.confirm_run_unsafe_code, args.samples, args.temperature, args.max_gen_toks,
              args.contamination, args.shards)
    elif args.cmd == "sample":
        ckpt = checkpoints(args.path)[-1]
        model, _, enc, meta = load(ckpt, args.device)
        # on stderr: stdout is the text alone
        step = f" (step {meta['step']})" if meta["step"] is not None else ""
        print(f"sampling {ckpt}{step}", file=sys.stderr, flush=True)
        gen = torch.Generator(device=args.device).manual_seed(args.seed)
        print(args.prompt, end="", flush=True)
        for piece in sample_text(model, enc, args.prompt, args.tokens, args.temperature,
                                 args.top_k, args.top_p, gen):
            print(piece, end="", flush=True)
        print()
    elif args.cmd == "export":
        ckpt = checkpoints(args.path)[-1]
        model, cfg, _, _ = load(ckpt, "cpu")
        if cfg is None:
            raise ConfigError(f"{args.path}: already a Hugging Face model")
        name = load_manifest(cfg.tokens_dir, hash_shards=False)["tokenizer"]
        tok = os.path.join(cfg.tokens_dir, name) if name.endswith((".tiktoken", ".json")) else None
        export_llama(model, args.out, tok)
        said = "tokenizer.json" if tok else f"no tokenizer (the run's is tiktoken's {name!r})"
        own = bool(llama_gaps(model.cfg))  # nano360's layout: its modeling file runs
        print(f"wrote {args.out}: {'nano360 layout' if own else 'Llama'}, "
              f"{model.num_params():,} parameters, {said} (from {ckpt}); load it with "
              "transformers.AutoModelForCausalLM.from_pretrained("
              f"{json.dumps(args.out, ensure_ascii=False)}"
              f"{', trust_remote_code=True' if own else ''})")
    elif args.cmd == "plot":
        path = plots.curves(args.path, args.out)
        if path is None:  # no matplotlib: the hint is printed
            return 1
        print(f"wrote {path}")
    else:
        state, mcfg = import_llama(args.path)
        torch.save(dict(model=state, config=vars(mcfg)), args.out)
        print(f"wrote {args.out}: {sum(t.numel() for t in state.values()):,} parameters. "
              f"Train from it with --init_from={args.out} and a config holding these lines:")
        print("\n".join(f"{k} = {v!r}" for k, v in vars(mcfg).items()))
    return 0


if __name__ == "__main__":
    run_command(main, DataError, ValueError)
