"""
Everything done with a checkpoint: loss and bits per byte per source, multiple-choice tasks
(tasks.py), memorization of the training data, a sweep over every checkpoint of a run,
sampling, the Hugging Face Llama format both ways, and the run's training curves (plots.py).

    python eval.py [sweep] [OUT_DIR | CKPT] [--tasks=DIR] [--shots=K] [--seqs=N]
                                                evals.jsonl, .md, .csv, .png
    python eval.py [sweep] HF_DIR --tasks=DIR   a Hugging Face Llama folder (results in
                                                HF_DIR.evals/), or a folder of them (a released
                                                model's intermediate checkpoints), with its
                                                tokenizer.json
    python eval.py plot OUT_DIR                 OUT_DIR/curves.png: the run's metrics.jsonl
    python eval.py sample CKPT --prompt="子曰：" [--temperature=0.8 --top_k=50 --top_p=0.95
            --seed=0 --tokens=128]
    python eval.py export CKPT OUT_DIR          Hugging Face Llama: config.json, model.safetensors,
                                                tokenizer
    python eval.py import HF_DIR OUT.pt         a Llama checkpoint as our state dict
                                                (train.py --init_from=OUT.pt)

`python eval.py COMMAND --help` lists each command's options.
"""
import argparse, csv, json, math, os, sys

import numpy as np
import torch
import torch.distributed as dist

import plots
from checkpoint import Checkpointer, CheckpointError, empty_model, load_model, step_of
from config import ConfigError, ModelConfig, place, run_command, uses_bf16
from data import Batches, load_manifest, read_shard, val_sequences
from model import autocast, sample_text, validation_loss
from stage import DataError, is_done, sha256_file, write_json
from suites import suite_of, suite_table, task_files
from tasks import loglikelihoods, run_task, shots_file, shots_of, task_prompts
from tokenizer import (check_tokenizer, export_tokenizer, load_json, load_tokenizer,
                       read_tiktoken, save_hf_tokenizer, special_ids, tokenizer_of)


# -----------------------------------------------------------------------------
# checkpoints

def is_hf(path):
    """A Hugging Face model folder: config.json and safetensors weights (a released model)."""
    weights = ("model.safetensors", "model.safetensors.index.json")
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        os.path.exists(os.path.join(path, f)) for f in weights)


def name_of(ckpt):
    return os.path.basename(os.path.abspath(ckpt))  # abspath: "." has a name too


def load(ckpt, device="cpu"):
    """(model, train config, tokenizer, meta) of a checkpoint written at any world size, or of a
    Hugging Face Llama folder (train config None; its tokenizer.json there or in the folder
    above, which may hold a released model's intermediate checkpoints)."""
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
    return model.eval(), None, enc, dict(step=step_of(ckpt), data_position=dict(tokens=None))


def checkpoints(path):
    """Every complete checkpoint of a run (oldest first), or the one given; or the Hugging Face
    folder given, or every one in the folder given, in the order of the numbers they end in."""
    if is_done(path) or is_hf(path):
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

def settings(tasks_dir, shots):
    """What a sweep row depends on besides the checkpoint: {task file: shots}."""
    return {os.path.basename(p)[:-6]: shots_of(p, shots) for p in task_files(tasks_dir)}


def task_sha256(tasks_dir, shots):
    """{file: sha256} of the task files a sweep reads, with the few-shot file of each task that
    gets shots: a row's scores are those of these bytes, whatever the files are named."""
    out = {}
    for path in task_files(tasks_dir):
        used = [path, shots_file(path)] if shots_of(path, shots) and shots_file(path) else [path]
        if not os.path.exists(used[-1]):
            raise DataError(f"{used[-1]}: not there, and {path} is asked {shots} shots from it "
                            "(--shots=0, or put the few-shot items there)")
        out.update((os.path.basename(p), sha256_file(p)) for p in used)
    return out


def evaluate_checkpoint(ckpt, tasks_dir, shots, seqs, device):
    """One row of the sweep: loss and bits per byte, tasks (with their shots), memorization."""
    model, cfg, enc, meta = load(ckpt, device)
    row = dict(ckpt=name_of(ckpt), step=meta["step"], tokens=meta["data_position"]["tokens"],
               tasks=settings(tasks_dir, shots), task_sha256=task_sha256(tasks_dir, shots))
    # a Hugging Face folder has no run, so no held-out data or trained sequences
    if cfg is not None:
        row.update(loss_and_bpb(model, cfg, enc, seqs))
        row.update(document_bpb(model, cfg, enc, seqs or 64))
    for path in task_files(tasks_dir):
        name = os.path.basename(path)[:-6]
        r = run_task(model, enc, path, row["tasks"][name])
        # each task's own metrics (acc, acc_norm, pct_stereotype, exact_match_*, pass@k, ...)
        row.update({f"{name}/{k}": v for k, v in r.items() if k not in ("n", "shots")})
    if cfg is not None:
        row.update(memorization(model, cfg, meta, seqs or 64))
    return row


def read_evals(log, note=True, rewrite=False):
    """The rows of an evals.jsonl. A line that is not a JSON row (a sweep killed mid-write) is
    left out, with a note; with rewrite, the file is written again without it."""
    if not os.path.exists(log):
        return []
    rows, torn = plots.read_jsonl(log, lambda row: "ckpt" in row)
    if torn and note:
        print(f"note: {log}: line{'s' * (len(torn) > 1)} {', '.join(torn)} not JSON, left out "
              "(written when a sweep was killed)", file=sys.stderr)
    if torn and rewrite:
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


def sweep(path, tasks_dir, shots=None, seqs=0, device="cpu"):
    """Every checkpoint of a run (or the one given), each evaluated once per setting: a row of
    evals.jsonl is kept when its checkpoint, task files (their sha256) and shots are the ones
    asked."""
    ckpts = checkpoints(path)
    if not tasks_dir and is_hf(ckpts[0]):
        raise ConfigError(f"{path}: a Hugging Face model has no run data to measure loss on: give "
                          "--tasks=FOLDER (task files in the public formats, data/evals/README.md)")
    # where the table goes: a run's folder (a checkpoint's run); one Hugging Face folder has
    # no run, and a table inside it would change the model's folder: NAME.evals beside it
    if is_hf(path):
        here = os.path.basename(os.path.normpath(path)) in (".", "..")  # no name to put .evals on
        run_dir = (os.path.abspath(path) if here else os.path.normpath(path)) + ".evals"
        os.makedirs(run_dir, exist_ok=True)
    elif len(ckpts) == 1 and path == ckpts[0]:
        run_dir = os.path.dirname(os.path.abspath(ckpts[0]))
    else:
        run_dir = path
    if not tasks_dir:
        print("no --tasks: loss, bits per byte and memorization only. Task files (HellaSwag, ARC, "
              "MMLU, C-Eval, CMMLU in their public formats, data/evals/README.md) go in a folder: "
              "--tasks=FOLDER", file=sys.stderr)
    want = dict(tasks=settings(tasks_dir, shots), task_sha256=task_sha256(tasks_dir, shots))
    for file in task_files(tasks_dir):  # a bad task file is said before a model is loaded
        task_prompts(file, shots_of(file, shots))
    log = os.path.join(run_dir, "evals.jsonl")
    # under torchrun the ranks split the checkpoints (one model per GPU); rank 0 writes the table
    rank, world, local = place()

    def kept(**how):  # a row from before the files' sha256 were recorded is computed again
        return [r for r in read_evals(log, **how) if {k: r.get(k) for k in want} == want]
    done = {r["ckpt"] for r in kept(note=rank == 0)}
    if world > 1 and device == "cuda":
        device = f"cuda:{local}"
    for ckpt in [c for c in ckpts if name_of(c) not in done][rank::world]:
        try:
            row = evaluate_checkpoint(ckpt, tasks_dir, shots, seqs, device)
        except CheckpointError as e:  # one damaged checkpoint does not stop a sweep over hundreds
            if len(ckpts) == 1:
                raise
            print(f"skipped {ckpt}: {e}", file=sys.stderr)
            continue
        print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in row.items() if k not in ("tasks", "task_sha256")))
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
    rows.sort(key=lambda r: (r["step"] is None, r["step"] or 0, r["ckpt"]))
    if rank == 0:
        write_table(rows, run_dir)
        if tasks_dir and suite_of(tasks_dir)[0] and rows:  # the newest beside the seed's table
            print(f"{rows[-1]['ckpt']} beside the published figures:\n"
                  + suite_table(tasks_dir, rows[-1]))
    return rows


def write_table(rows, run_dir):
    # tasks: the shots, said above the table; the task files' sha256 stay in evals.jsonl
    rows = [{k: v for k, v in r.items() if k != "task_sha256"} for r in rows]
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
# Hugging Face Llama format: export (config.json, model.safetensors, and tokenizer.json from
# our .tiktoken: tokenizer.py) and import (our state dict and ModelConfig). One name map serves
# both ways, so they cannot drift apart.

def check_llama(cfg):
    # what Llama cannot express, all reported at once, each naming its config key
    bad = [(cfg.norm == "layernorm", "norm='layernorm' (LayerNorm has a bias; Llama uses RMSNorm)"),
           (cfg.rotary_dim != cfg.head_dim,
            f"rotary_dim={cfg.rotary_dim} < head_dim={cfg.head_dim} (partial rotary)"),
           (cfg.embed_mult != 1.0, f"embed_mult={cfg.embed_mult} (muP embedding multiplier)"),
           (cfg.logit_mult != 1.0, f"logit_mult={cfg.logit_mult} (muP logit multiplier)"),
           (cfg.qk_scale_by_d, "qk_scale_by_d=True (muP 1/head_dim attention scale)"),
           (cfg.qkv_bias != cfg.attn_out_bias,
            f"qkv_bias={cfg.qkv_bias} with attn_out_bias={cfg.attn_out_bias} "
            "(HF's attention_bias covers q, k, v and o together)")]
    msgs = [msg for is_bad, msg in bad if is_bad]
    if msgs:
        raise ValueError("cannot express this model as Hugging Face Llama: " + "; ".join(msgs))


def name_map(cfg):
    """(our name, [HF names], row sizes to split ours into) for every tensor; sizes None: one
    to one."""
    q, kv, f = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.ffn_hidden
    m = [("embed.weight", ["model.embed_tokens.weight"], None),
         ("norm.weight", ["model.norm.weight"], None)]
    if not cfg.tie_embeddings:
        m.append(("lm_head.weight", ["lm_head.weight"], None))
    for i in range(cfg.n_layer):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        m += [(b + "norm1.weight", [h + "input_layernorm.weight"], None),
              (b + "norm2.weight", [h + "post_attention_layernorm.weight"], None)]
        for s in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            m += [(b + "attn.qkv." + s, [h + f"self_attn.{x}_proj." + s for x in "qkv"],
                   [q, kv, kv]),
                  (b + "attn.out." + s, [h + "self_attn.o_proj." + s], None)]
        for s in ("weight", "bias") if cfg.ffn_bias else ("weight",):
            m += [(b + "mlp.up." + s, [h + "mlp.gate_proj." + s, h + "mlp.up_proj." + s], [f, f]),
                  (b + "mlp.down." + s, [h + "mlp.down_proj." + s], None)]
    return m


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError("Hugging Face export/import needs safetensors: "
                          "pip install safetensors") from None
    return safetensors.torch


def save_safetensors(tensors, path):
    """tensors in path, with the mode open() gives a new file (0o666 less the umask).
    safetensors 0.8 writes a temporary file, created 0600 whatever the umask, and renames it
    (safetensors issue #782): the model alone would be unreadable to the other users of a
    shared machine, beside a readable config.json."""
    _safetensors().save_file(tensors, path, metadata={"format": "pt"})
    umask = os.umask(0)  # read it the only portable way: set it, and put it back at once
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


# -----------------------------------------------------------------------------
# export and import

def export_llama(model, out_dir, tokenizer_path=None):
    """Write model (a GPT) to out_dir in the Hugging Face Llama format, float32."""
    cfg = model.cfg
    check_llama(cfg)
    if cfg.d_model % cfg.n_head:  # valid Llama, but transformers 5's config validation refuses it
        print(f"note: transformers 5 will not load this: hidden_size={cfg.d_model} is not a "
              f"multiple of num_attention_heads={cfg.n_head} (transformers 4 does)")
    specials, released = {}, tokenizer_path and tokenizer_path.endswith(".json")
    if released:  # a run trained with a released tokenizer.json: that file goes along as it is
        enc = load_tokenizer(tokenizer_path)
        n, specials = enc.n_vocab, {"<|endoftext|>": enc.eot_token, "<s>": enc.prefix_token}
    elif tokenizer_path:
        ranks, pat, specials = read_tiktoken(tokenizer_path)
        n = len(ranks) + len(specials)
    if tokenizer_path and n > cfg.vocab_size:
        raise ValueError(f"tokenizer has {n} tokens, more than vocab_size={cfg.vocab_size}")
    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    tensors = {}
    for ours, names, sizes in name_map(cfg):
        parts = sd.pop(ours).split(sizes) if sizes else [sd.pop(ours)]
        # own storage: safetensors wants no sharing
        tensors.update((n, p.clone().contiguous()) for n, p in zip(names, parts))
    if sd:
        raise ValueError(f"tensors with no Llama name: {sorted(sd)}")
    save_safetensors(tensors, os.path.join(out_dir, "model.safetensors"))
    eot, pad, bos = (specials.get("<|endoftext|>"), specials.get("<|pad|>"),
                     specials.get("<s>", specials.get("<|endoftext|>")))
    write_json(os.path.join(out_dir, "config.json"), dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        # rope_theta for transformers 4, rope_parameters for 5 (which also reads the former)
        rope_theta=float(cfg.rope_theta),
        rope_parameters=dict(rope_type="default", rope_theta=float(cfg.rope_theta)),
        rope_scaling=None, tie_word_embeddings=cfg.tie_embeddings, attention_bias=cfg.qkv_bias,
        mlp_bias=cfg.ffn_bias, attention_dropout=0.0, initializer_range=cfg.init_std,
        # bos: end-of-text, which ends every document and so begins the next (a released
        # tokenizer: its own)
        bos_token_id=bos, eos_token_id=eot, pad_token_id=pad, torch_dtype="float32",
        dtype="float32", use_cache=True))
    gen = dict(bos_token_id=bos, eos_token_id=eot, pad_token_id=pad)
    write_json(os.path.join(out_dir, "generation_config.json"),
               {k: v for k, v in gen.items() if v is not None})
    if released:
        save_hf_tokenizer(enc, out_dir)
    elif tokenizer_path:
        export_tokenizer(ranks, pat, specials, out_dir)


LLAMA_KEYS = ("vocab_size", "num_hidden_layers", "hidden_size", "num_attention_heads",
              "intermediate_size", "max_position_embeddings")


def config_from_hf(c, where="config.json"):
    """A ModelConfig from a Llama config.json dict (read from where); refuses what our model
    cannot run."""
    if c.get("model_type") != "llama":
        raise ValueError(f"model_type={c.get('model_type')!r}: only 'llama' can be imported")
    missing = [k for k in LLAMA_KEYS if k not in c]
    if missing:
        raise DataError(f"{where}: no {', '.join(missing)} (a Llama config.json has "
                        f"{', '.join(LLAMA_KEYS)})")
    rope = c.get("rope_parameters") or {}
    if c.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_scaling={c.get('rope_scaling') or rope!r}: scaled rotary "
                         "embeddings are not supported")
    if c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act={c['hidden_act']!r}: only 'silu' (SwiGLU) is supported")
    n_head, bias = c["num_attention_heads"], c.get("attention_bias", False)
    return ModelConfig(
        vocab_size=c["vocab_size"], n_layer=c["num_hidden_layers"], d_model=c["hidden_size"],
        n_head=n_head, n_kv_head=c.get("num_key_value_heads") or n_head,
        head_dim=c.get("head_dim") or c["hidden_size"] // n_head,
        ffn_hidden=c["intermediate_size"], max_seq_len=c["max_position_embeddings"], norm="rmsnorm",
        norm_eps=c.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
        tie_embeddings=c.get("tie_word_embeddings", False), qkv_bias=bias, attn_out_bias=bias,
        ffn_bias=c.get("mlp_bias", False))


def hf_weights(hf_dir):
    """The weight files of a Hugging Face folder: model.safetensors, or the shards its index
    names. Only safetensors: pytorch_model.bin is a pickle, and reading a pickle runs the code
    it names, so a downloaded one is never read."""
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    files = (sorted(set(load_json(index).get("weight_map", {}).values()))
             if os.path.exists(index) else ["model.safetensors"])
    missing = [f for f in files if not os.path.isfile(os.path.join(hf_dir, f))]
    if missing:
        pickles = sorted(f for f in os.listdir(hf_dir) if f.endswith((".bin", ".pt", ".pth")))
        raise DataError(f"{os.path.join(hf_dir, missing[0])}: not there" + (
            f", only {', '.join(pickles)} (a pickle): only .safetensors weights are read, as "
            "loading a pickle runs whatever code it names (convert it to safetensors where you "
            "trust it)" if pickles else ""))
    return [os.path.join(hf_dir, f) for f in files]


def import_llama(hf_dir):
    """(state dict, ModelConfig) of the Llama checkpoint in hf_dir (model.safetensors, or shards
    with an index)."""
    conf = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(conf):
        raise DataError(f"{conf}: not there (a Hugging Face model folder has it)")
    cfg = config_from_hf(load_json(conf), conf)
    hf, st = {}, _safetensors()
    for f in hf_weights(hf_dir):
        try:
            hf.update(st.load_file(f))
        except Exception as e:  # noqa: BLE001: SafetensorError: a header it cannot read
            raise DataError(f"{f}: not a safetensors file safetensors can read "
                            f"({' '.join(str(e).split())})") from None
    sd = {}
    for ours, names, _ in name_map(cfg):
        missing = [n for n in names if n not in hf]
        if missing:
            raise ValueError(f"{hf_dir}: checkpoint lacks {missing}")
        sd[ours] = torch.cat([hf.pop(n) for n in names]) if len(names) > 1 else hf.pop(names[0])
    hf.pop("lm_head.weight", None)  # a tied checkpoint may store the embedding twice
    # old checkpoints saved the rope buffer
    extra = [n for n in hf if "rotary_emb.inv_freq" not in n]
    if extra:
        raise ValueError(f"{hf_dir}: tensors our model has no place for: {extra[:5]}")
    return sd, cfg


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
                    "file is, else 0)")
    sw.add_argument("--seqs", type=int, default=0,
                    help="held-out sequences per source (default: the run's eval_seqs) and "
                    "memorization sequences (default 64)")
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
    ex = sub.add_parser("export", help="a checkpoint as a Hugging Face Llama folder")
    ex.add_argument("path", help="a checkpoint, or a run (its newest)")
    ex.add_argument("out", help="the folder to write")
    im = sub.add_parser("import",
                        help="a Hugging Face Llama folder as our state dict (for --init_from)")
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
        sweep(args.path, args.tasks, args.shots, args.seqs, args.device)
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
        print(f"wrote {args.out}: Llama, {model.num_params():,} parameters, {said} (from {ckpt}); "
              "load it with transformers.AutoModelForCausalLM.from_pretrained("
              f"{json.dumps(args.out, ensure_ascii=False)})")
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
