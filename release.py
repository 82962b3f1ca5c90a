"""
A fully open release of a run, and the check a stranger runs on one: every kept checkpoint as
a Hugging Face folder, the tokenizer, the data's manifest and order, the curation reports, the
metrics and evaluations, a model card and a data card, and SHA256SUMS over all of it.

    python release.py CONFIG RELEASE_DIR [--tasks=DIR] [--license=ID] [--key=value ...]
                        make what is not made yet, each step the command a user would run (and
                        each skipping what is done): curation (python curate.py pipeline, when
                        CONFIG names a source_dir) or tokenize (python data.py tokenize), the
                        training (python train.py --resume=auto), the sweep over every kept
                        checkpoint (python eval.py sweep, with --tasks or CONFIG's tasks_dir);
                        then package the run into RELEASE_DIR, which must not exist yet
    python release.py package CONFIG RELEASE_DIR [...]     the package alone, of a finished run
    python release.py verify RELEASE_DIR [--shards=DIR] [--eval=STEP [--tasks=DIR]]
                        every checksum, every file listed, every checkpoint loaded (safetensors
                        and JSON only: nothing in a release runs code), run/metrics.jsonl held to
                        the log each checkpoint recorded; with the token shards the release
                        names, each checkpoint's validation loss computed again, its folder
                        loaded in transformers too (by its layout's class) and held to nano360's
                        logits, and the batch of its last step rebuilt in the data order; with
                        --eval, that checkpoint's row of run/evals.jsonl computed again (its
                        tasks from --tasks, the files it records); one line per check, each
                        mismatch named with its file; status 1 if any

RELEASE_DIR (written in a temporary folder beside it, renamed into place when whole):
    checkpoints/ckpt_NNNNNNN/   each kept checkpoint as a Hugging Face folder (hf_llama.py: Llama,
                                or nano360's layout with its modeling_nano360.py; config.json,
                                model.safetensors, tokenizer.json) and nano360.json: its step,
                                data position, code revision, manifest sha256, config, the
                                length and sha256 of metrics.jsonl when saved, and its loss on
                                the run's validation windows
    model/                      the last checkpoint's folder again: the release's main model
    tokenizer/                  the run's tokenizer as tokenize wrote it (.tiktoken and its .json)
    data/manifest.json          the token shards: file, source, split, tokens and sha256 of each
    data/order.json             what orders the samples: seed, batch, sequence length, mixture
    curation/<stage>.json       report.json of each curation folder the config names
    run/                        config.json, metrics.jsonl, evals.jsonl/.md/.csv, *.png as the run
                                wrote them
    README.md, DATA_CARD.md     the model card (Hugging Face's metadata header) and the data card,
                                their figures read from the run
    SHA256SUMS                  the sha256 of every other file (`sha256sum -c SHA256SUMS` reads it)
"""
import json, os, shutil, subprocess, sys

import torch

import eval as ev
from checkpoint import Checkpointer, empty_model, load_model, step_of
from config import ConfigError, load_config, place, pop_flag, run_command
from data import Batches, load_manifest, val_sequences
from gentasks import CODE
from hf_llama import export_llama, import_llama, llama_gaps, transformers_model
from model import validation_loss
from stage import DataError, commit_dir, read_json, sha256_file, tmp_dir, written_by
from suites import task_files
from tasks import task_of

ROOT = os.path.dirname(os.path.abspath(__file__))
SUMS = "SHA256SUMS"
ORDER_KEYS = ("seed", "seq_len", "mixture", "fim_rate", "fim_spm_rate", "fim_sources",
              "global_batch_size", "batch_size", "val_frac", "max_steps", "schedule_steps")
CURATION = ("clean_dir", "dedup_dir", "docs_dir")


# -----------------------------------------------------------------------------
# make: every step a release needs, each the command a user would run

def steps(cfg, args, tasks):
    """[(what, command)] that make the run cfg names, in order; args: CONFIG and its --key=value
    overrides, passed on to every step that reads a config. Each step skips what is done: a
    finished curation stage, a complete tokens_dir, a run at max_steps, a checkpoint's evals."""
    py = [sys.executable]
    data = ([("curation", py + [os.path.join(ROOT, "curate.py"), "pipeline", *args])]
            if cfg.source_dir else
            [("tokenize", py + [os.path.join(ROOT, "data.py"), "tokenize", *args])]
            if cfg.docs_dir else [])
    return data + [
        ("training", py + [os.path.join(ROOT, "train.py"), *args, "--resume=auto"]),
        ("sweep", py + [os.path.join(ROOT, "eval.py"), "sweep", cfg.out_dir]
         + ([f"--tasks={tasks}"] if tasks else []))]


def make(todo):
    """Run todo's steps one after the other; the first that fails stops the rest. Under torchrun
    each step runs on every rank (the children inherit RANK and WORLD_SIZE), as it would
    launched alone; step n meets its ranks at MASTER_ADDR:MASTER_PORT + n."""
    for n, (what, cmd) in enumerate(todo, 1):
        shown = " ".join(["python", os.path.relpath(cmd[1])] + cmd[2:])
        if place()[0] == 0:  # said once, not once per rank
            print(f"== release {n}/{len(todo) + 1}: {what}: {shown}", flush=True)
        env = dict(os.environ)
        if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # under torchrun: each step its own
            # rendezvous (rank 0's child hosts it on the next port), as a process group's keys
            # left in torchrun's store would meet the next step's and connect it to dead ranks
            env.update(TORCHELASTIC_USE_AGENT_STORE="False",
                       MASTER_PORT=str(int(env["MASTER_PORT"]) + n))
        code = subprocess.run(cmd, env=env).returncode
        if code:
            raise ConfigError(f"{what} failed (status {code}): {shown}; fix what it said and run "
                              "release.py again: each step resumes where it stopped")


# -----------------------------------------------------------------------------
# package

def copy(src, dst):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def dump(path, obj):
    write(path, json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=True) + "\n")


def last_val(metrics):
    """The last validation line of a metrics.jsonl: (step, {source: loss})."""
    rows = [json.loads(line) for line in open(metrics, encoding="utf-8") if line.strip()]
    val = [r for r in rows if isinstance(r.get("val"), dict)]
    return (val[-1]["step"], val[-1]["val"]) if val else (None, {})


def languages(sources):
    """Hugging Face language codes of the manifest's sources (named en_*, zh_*, code)."""
    return sorted({s.split("_")[0] for s in sources if s.split("_")[0] in ("en", "zh")})


def model_card(name, meta, manifest, n_params, val, license, evals=(), own=False):
    """README.md of a release: Hugging Face's metadata header, what the model is, how to load and
    check it, its validation loss per source, and the sweep's figures of its last checkpoint."""
    step, losses = val
    pos = meta["data_position"]
    remote, why = ((", trust_remote_code=True", " (nano360's layout: its `modeling_nano360.py` "
                    "is StableLm with muP's multipliers and biases)") if own else ("", ""))
    tasks = any("/acc" in k for r in evals for k in r)
    header = "\n".join(["---", f"license: {license}", "language:",
                        *(f"- {lang}" for lang in languages(manifest["sources"])),
                        "datasets:",  # the sources of data/manifest.json (not Hub datasets)
                        *(f"- {name}" for name in sorted(manifest["sources"])),
                        "library_name: transformers", "pipeline_tag: text-generation",
                        "tags:", "- nano360", "- fully-open", "metrics:", "- perplexity",
                        *(["- accuracy"] if tasks else []), "---"])
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in losses.items())
    last = [r for r in evals if r.get("step") == meta["step"]][-1:]
    table = "\n".join(f"| {k} | {v:.4f} |" for r in last for k, v in r.items()
                      if isinstance(v, float))
    return f"""{header}

# {name}

A {n_params:,}-parameter decoder trained by nano360 (code revision `{meta["git"]}`): {pos["step"]:,}
steps, {pos["tokens"]:,} tokens ({pos["epoch"]:.2f} epochs of the released token shards).

Every kept checkpoint is in `checkpoints/` as a Hugging Face folder, with the data position it
reached (`nano360.json`). The final one is `model/`:
`AutoModelForCausalLM.from_pretrained("model"{remote})` loads it{why}.
The data it saw, in order: `data/` (manifest with the sha256 of each shard, and the order's
settings); its curation: `curation/` and DATA_CARD.md; its training log and evaluations: `run/`.

`python release.py verify .` checks every file; with the token shards (`--shards=DIR`) it also
computes each checkpoint's validation loss again and rebuilds the batch of its last step, and
`--eval=STEP --tasks=DIR` computes that checkpoint's evaluation again.

## Validation loss at step {step} (nats per token, per source)

| source | loss |
|---|---|
{rows}
""" + (f"""
## Evaluation of step {meta["step"]} (`run/evals.md` has every checkpoint)

| metric | value |
|---|---|
{table}
""" if table else "")


def language(source):
    """A source's language as its name says it (en_*, zh_*), else its name (code, web, ...)."""
    head = source.split("_")[0]
    return head if head in ("en", "zh") else source


def settings_line(what, d):
    return f"{what}: " + ", ".join(f"{k} {v}" for k, v in sorted(d.items())) + "."


def data_card(manifest, reports):
    """DATA_CARD.md: per source its language, documents, characters and tokens; per curation
    stage what it kept of each source and why it removed the rest, and the settings it ran with
    (clean's rules per language, dedup's MinHash parameters)."""
    rows = "\n".join(f"| {name} | {language(name)} | {s['documents']:,} | {s['characters']:,} | "
                     f"{s['train_tokens']:,} | {s['val_tokens']:,} |"
                     for name, s in sorted(manifest["sources"].items()))
    stages = []
    for stage, r in reports.items():  # per source: documents in, kept, and why the others went
        stages.append(f"\n### {stage} (`curation/{stage}.json`)\n\n| source | documents | kept | "
                      "removed | bytes kept | removed, by reason |\n|---|---|---|---|---|---|")
        for name, s in sorted(r.get("sources", {}).items()):
            n, kept = s.get("documents", 0), s.get("kept", 0)
            why = ", ".join(f"{k} {v:,}" for k, v in sorted(s.get("removed", {}).items()))
            size = f"{s['bytes_out'] / s['bytes_in']:.1%}" if s.get("bytes_in") else ""
            stages.append(f"| {name} | {n:,} | {kept:,} | {(n - kept) / max(n, 1):.1%} | {size} "
                          f"| {why} |")
        stages += [f"\n{settings_line(f'Rules for {lang}', rules)}"
                   for lang, rules in sorted(r.get("rules", {}).items())]
        if r.get("params"):
            stages.append(f"\n{settings_line('Settings', r['params'])} "
                          f"Near-duplicate clusters: {r.get('clusters', 0):,}.")
    return f"""# Data card

The token shards this model trained on (`data/manifest.json`: each shard's file, source, split,
token count and sha256), with a {manifest["n_vocab"]:,}-token vocabulary; the last
{manifest["val_frac"]:.0%} of each source's tokens is its validation split.

| source | language | documents | characters | train tokens | validation tokens |
|---|---|---|---|---|---|
{rows}

## Curation
{chr(10).join(stages) or chr(10) + "(the config names no curation folder with a report)"}
"""


def val_windows(tokens_dir, manifest, windows):
    """{source: windows} of tokens_dir's validation split that windows names (the run's own
    validation: seq_len, eval_seqs)."""
    return val_sequences(tokens_dir, manifest, windows["seq_len"], windows["eval_seqs"])


def val_loss(model, val, manifest, windows):
    """{source: loss} of model on val as the run validates (batch_size, doc_mask), float32, CPU."""
    with torch.no_grad():
        return validation_loss(model, val, windows["batch_size"], torch.device("cpu"),
                               eot=manifest["eot"] if windows["doc_mask"] else None)


def package(cfg, release_dir, license="other"):
    """RELEASE_DIR from the run cfg names; the list of checkpoints packaged."""
    if os.path.exists(release_dir):
        raise ConfigError(f"{release_dir}: already there (a release is written whole into a new "
                          "folder; name another, or remove this one yourself)")
    ckpts = Checkpointer.complete(cfg.out_dir)
    if not ckpts:
        raise ConfigError(f"{cfg.out_dir}: no complete checkpoint to release "
                          "(`python train.py CONFIG` makes them)")
    gone = sorted(set(range(cfg.ckpt_interval, step_of(ckpts[-1]), cfg.ckpt_interval))
                  - {step_of(c) for c in ckpts})
    if gone:  # said, not refused: a run's pruned checkpoints cannot be made again
        print(f"note: {len(gone)} of the checkpoints the run saved are gone (steps {gone[0]} to "
              f"{gone[-1]}; keep_last={cfg.keep_last} pruned them): the release holds "
              f"{len(ckpts)}; keep_every={cfg.ckpt_interval} keeps every one for a release, as "
              "LLM360 kept all 360 of Amber's")
    manifest = load_manifest(cfg.tokens_dir)  # every shard checked against its sha256
    tmp = tmp_dir(release_dir)
    tok = os.path.join(cfg.tokens_dir, manifest["tokenizer"])
    windows = dict(seq_len=cfg.seq_len, eval_seqs=cfg.eval_seqs, batch_size=cfg.batch_size,
                   doc_mask=cfg.doc_mask)
    val = val_windows(cfg.tokens_dir, manifest, windows)
    for ckpt in ckpts:  # each with its loss on the validation windows, which verify recomputes
        model, _, meta = load_model(ckpt, "cpu")
        folder = os.path.join(tmp, "checkpoints", os.path.basename(ckpt))
        export_llama(model, folder, tok)
        dump(os.path.join(folder, "nano360.json"), dict(
            {k: meta.get(k) for k in ("step", "data_position", "git", "manifest_sha256",
                                      "tokenizer_sha256", "config", "world_size", "metrics")},
            val_windows=windows,
            val_loss=val_loss(model.float(), val, manifest, windows)))
    shutil.copytree(folder, os.path.join(tmp, "model"))
    for f in (tok, tok + ".json"):
        if os.path.exists(f):
            copy(f, os.path.join(tmp, "tokenizer", os.path.basename(f)))
    copy(os.path.join(cfg.tokens_dir, "manifest.json"), os.path.join(tmp, "data", "manifest.json"))
    dump(os.path.join(tmp, "data", "order.json"),  # Batches' arguments: the order of every sample
         dict({k: getattr(cfg, k, None) for k in ORDER_KEYS},
              manifest_sha256=meta["manifest_sha256"],
              global_batch=meta["data_position"]["global_batch"]))
    reports = {}
    for key in CURATION:  # each stage's report once (docs_dir is dedup's, or decontaminate's)
        folder = getattr(cfg, key, "") or ""
        report, stage = read_json(os.path.join(folder, "report.json")), written_by(folder)
        if report is not None and (stage or key[:-4]) not in reports:
            reports[stage or key[:-4]] = report
            dump(os.path.join(tmp, "curation", f"{stage or key[:-4]}.json"), report)
    dump(os.path.join(tmp, "run", "config.json"), meta["config"])
    for f in sorted(os.listdir(cfg.out_dir)):
        if f.startswith(("metrics.jsonl", "evals.")) or f.endswith(".png"):
            copy(os.path.join(cfg.out_dir, f), os.path.join(tmp, "run", f))
    metrics = os.path.join(tmp, "run", "metrics.jsonl")
    val = last_val(metrics) if os.path.exists(metrics) else (None, {})
    evals = ev.read_evals(os.path.join(tmp, "run", "evals.jsonl"), note=False)
    write(os.path.join(tmp, "README.md"),
          model_card(os.path.basename(os.path.abspath(release_dir)), meta, manifest,
                     model.num_params(), val, license, evals, bool(llama_gaps(model.cfg))))
    write(os.path.join(tmp, "DATA_CARD.md"), data_card(manifest, reports))
    write_sums(tmp)
    commit_dir(tmp, release_dir, replace=False)  # DONE: the folder is whole (not in SHA256SUMS)
    return ckpts


def files_of(root):
    """Every file under root, relative, sorted; SHA256SUMS itself left out."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        out += [os.path.relpath(os.path.join(d, f), root) for f in sorted(files)]
    return [f for f in out if f not in (SUMS, "DONE")]


def write_sums(root):
    write(os.path.join(root, SUMS),
          "".join(f"{sha256_file(os.path.join(root, f))}  {f}\n" for f in files_of(root)))


# -----------------------------------------------------------------------------
# verify

def check_checkpoint(release_dir, folder, shards, manifest, batches, vals, check, out, tol):
    """A checkpoint folder of the release: it loads (safetensors and JSON), its log is the
    run's, and with the shards its validation loss and its last step's batch are its record's."""
    meta = json.load(open(os.path.join(folder, "nano360.json"), encoding="utf-8"))
    state, mcfg = import_llama(folder)  # safetensors and JSON: no code runs
    n = sum(t.numel() for t in state.values())
    name = os.path.basename(folder)
    good = name == "model" or meta["step"] == int(name.rsplit("_", 1)[-1])
    check(good, folder, f"nano360.json says step {meta['step']}")
    if good:
        out(f"      {n:,} parameters, step {meta['step']}, "
            f"{meta['data_position']['tokens']:,} tokens seen")
    rec, log = meta.get("metrics"), os.path.join(release_dir, "run", "metrics.jsonl")
    if rec:  # the log as it stood when the checkpoint was saved: a prefix of the run's
        same = (os.path.isfile(log) and os.path.getsize(log) >= rec["bytes"]
                and sha256_file(log, rec["bytes"]) == rec["sha256"])
        check(same, f"{log} to step {meta['step']}", f"its first {rec['bytes']:,} bytes are "
              "not the log "
              f"{folder}/nano360.json recorded at step {meta['step']} (a line edited, added or "
              "dropped)")
    if manifest is not None:
        model = empty_model(mcfg, "cpu")
        model.load_state_dict(state)
        key = json.dumps(meta["val_windows"], sort_keys=True)  # read once for all
        if key not in vals:
            vals[key] = val_windows(shards, manifest, meta["val_windows"])
        got = val_loss(model.eval(), vals[key], manifest, meta["val_windows"])
        off = max(abs(got[k] - v) for k, v in meta["val_loss"].items())
        check(off <= tol, f"{folder}/model.safetensors",
              f"validation loss {got['all']:.6f} on {shards}, but nano360.json records "
              f"{meta['val_loss']['all']:.6f}")
        if off <= tol:
            out(f"      validation loss {got['all']:.4f} on {shards}, as recorded")
        hf = transformers_model(folder)  # by its layout's class: the folder's .py never runs
        if hf is None:
            out("      transformers is not installed: its load of the folder is not checked")
        else:  # a validation window, in both: the recorded loss is transformers' model's too
            x = torch.from_numpy(next(iter(vals[key].values()))[:1, :-1])
            with torch.no_grad():
                diff = (hf(x).logits - model(x)).abs().max().item()
            check(diff <= tol, f"{folder}/config.json", f"transformers' logits differ from "
                  f"nano360's by {diff:.2e} (more than {tol:g})")
            if diff <= tol:
                out(f"      in transformers ({type(hf).__name__}): nano360's logits, within "
                    f"{diff:.1e}")
        step, want_batch = meta["step"] - 1, meta["data_position"].get("last_batch_sha256")
        if want_batch:  # the batch of the last step it trained, rebuilt from the shards
            check(batches.sha256(step) == want_batch, f"{release_dir}/data/order.json",
                  f"step {step}'s batch, rebuilt from {shards} in this order, is not the "
                  f"one {folder}/nano360.json records")
        else:
            out("      no batch hash recorded (saved by an older nano360): the order of "
                "its steps is not checked")


def recompute(release_dir, which, shards, tasks, check, out, tol):
    """The row of run/evals.jsonl of checkpoint `which` (a folder name, or a step), computed
    again from the release's folder and shards as the sweep computed it: loss, bits per byte,
    memorization, and the tasks whose files (tasks) are those the row records (sha256); the code
    tasks are left out (they run what the model writes)."""
    name = f"ckpt_{int(which):07d}" if str(which).isdigit() else os.path.basename(which)
    log, folder = (os.path.join(release_dir, "run", "evals.jsonl"),
                   os.path.join(release_dir, "checkpoints", name))
    rows = [r for r in ev.read_evals(log, note=False) if r["ckpt"] == name]
    if not rows or not os.path.isdir(folder):
        check(False, log if not rows else folder, f"no evaluation of {name} to compute again")
        return
    row, files = rows[-1], [f for f in task_files(tasks) if task_of(f) not in CODE]
    files = [f for f in files if os.path.basename(f)[:-6] in row.get("tasks", {})]
    defaults = ev.settings(files, None)  # {task: shots} of the files kept
    left = sorted(set(row.get("tasks", {})) - set(defaults))
    if left:
        out(f"      left out (no --tasks file, or code that runs): {', '.join(left)}")
    shots = None  # each task's default; else the one count the sweep was given
    if defaults != {k: row["tasks"][k] for k in defaults}:
        shots = next(iter(row["tasks"].values()))
    for f, digest in ev.task_sha256(files, shots).items():
        if row["task_sha256"].get(f) != digest:
            check(False, os.path.join(tasks, f), f"not the task file {log} records for {name}")
            return
    gen = {k: v for k, v in (row.get("generation") or {}).items() if k in defaults}
    got = ev.evaluate_checkpoint(folder, files, shots, row.get("seqs", 0), "cpu", gen or None,
                                 None, shards)
    figures = [k for k, v in got.items() if isinstance(v, float) and isinstance(row.get(k), float)]
    off = [k for k in figures if not abs(got[k] - row[k]) <= tol]
    check(not off, log, f"{name}'s " + ", ".join(f"{k} {row[k]:.6f} (computed again: {got[k]:.6f})"
                                                  for k in off[:4]))
    if not off:
        out(f"      {name}: {len(figures)} figures of its evaluation computed again, as recorded")


def verify(release_dir, shards=None, out=print, tol=1e-4, evals=None, tasks=None):
    """Each check of release_dir, one line each ("ok ..." or "FAIL file: why"); the failures.
    shards: the token shards the release names (a folder with their manifest.json): each
    checkpoint's validation loss is then computed again on them, and the batch of the last step
    it trained rebuilt in order.json's order, each compared with its record. evals: a
    checkpoint (its folder's name, or its step) whose row of run/evals.jsonl is computed again,
    its tasks from the task files in tasks."""
    if evals and not shards:
        raise ConfigError("--eval computes a checkpoint's evaluation again on the release's token "
                          "shards: give --shards=DIR too")
    sums_path = os.path.join(release_dir, SUMS)
    if not os.path.isfile(sums_path):
        raise DataError(f"{sums_path}: not there: {release_dir} is not a release (or not whole)")
    want = {}
    for n, line in enumerate(open(sums_path, encoding="utf-8"), 1):
        digest, _, name = line.rstrip("\n").partition("  ")
        if len(digest) != 64 or not name:
            raise DataError(f"{sums_path}, line {n}: not '<sha256>  <file>'")
        want[name] = digest
    fails = []

    def check(ok, what, why):
        out(f"ok    {what}" if ok else f"FAIL  {what}: {why}")
        if not ok:
            fails.append(f"{what}: {why}")
    for name in sorted(want):
        path = os.path.join(release_dir, name)
        if not os.path.isfile(path):
            check(False, path, f"missing (listed in {SUMS})")
        else:
            check(sha256_file(path) == want[name], path, f"sha256 differs from {SUMS}'s")
    for name in sorted(set(files_of(release_dir)) - set(want)):
        check(False, os.path.join(release_dir, name), f"not listed in {SUMS}")
    manifest = None
    if shards:  # the released manifest, byte for byte, and every shard against its sha256
        mine = os.path.join(shards, "manifest.json")
        same = os.path.isfile(mine) and sha256_file(mine) == want.get("data/manifest.json")
        check(same, mine, f"not the manifest of {release_dir}/data/manifest.json")
        if same:
            try:
                manifest = load_manifest(shards)
                check(True, f"{shards}: {len(manifest['shards'])} shards", "")
            except DataError as e:
                check(False, str(e).split(":")[0], str(e).split(": ", 1)[-1])
    batches, vals = None, {}
    if manifest is not None:  # the samples in order, rebuilt from the shards and order.json
        where = os.path.join(release_dir, "data", "order.json")
        try:
            o = json.load(open(where, encoding="utf-8"))
            batches = Batches(shards, o["seq_len"], o["global_batch"], o["seed"], False,
                              o["mixture"], o["fim_rate"], o["fim_spm_rate"],
                              tuple(o["fim_sources"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            check(False, where, f"not the order of a release ({type(e).__name__}: {e})")
            manifest = None
    root = os.path.join(release_dir, "checkpoints")
    folders = sorted(os.path.join(root, c) for c in os.listdir(root)) if os.path.isdir(root) else []
    for folder in folders + [os.path.join(release_dir, "model")]:
        try:
            check_checkpoint(release_dir, folder, shards, manifest, batches, vals, check, out, tol)
        except (OSError, ValueError, KeyError, ConfigError, DataError) as e:
            check(False, folder, f"does not load ({e})")
    if evals and manifest is not None:  # (shards that are not the release's: said above)
        recompute(release_dir, evals, shards, tasks, check, out, tol)
    out(f"{release_dir}: {'every check passed' if not fails else f'{len(fails)} check(s) failed'}")
    return fails


# -----------------------------------------------------------------------------

def main(argv):
    argv = list(argv)
    if argv[:1] == ["verify"]:
        shards, evals, tasks = (pop_flag(argv, f) for f in ("--shards", "--eval", "--tasks"))
        if len(argv) != 2:
            raise ConfigError("usage: python release.py verify RELEASE_DIR [--shards=DIR] "
                              "[--eval=STEP --tasks=DIR]")
        return 1 if verify(argv[1], shards, evals=evals, tasks=tasks) else 0
    only = argv[:1] == ["package"]
    argv = argv[only:]
    license, tasks = pop_flag(argv, "--license") or "other", pop_flag(argv, "--tasks")
    pos = [a for a in argv if not a.startswith("-")]
    if len(pos) != 2:
        print(__doc__.strip())
        return 2
    args = [a for a in argv if a != pos[1]]
    cfg, _ = load_config(args)
    if os.path.exists(pos[1]):  # said before hours of work, not after
        raise ConfigError(f"{pos[1]}: already there (a release is written whole into a new "
                          "folder; name another, or remove this one yourself)")
    if cfg.source_dir and not only and not os.path.isdir(cfg.source_dir):
        raise ConfigError(f"source_dir={cfg.source_dir}: not there (the raw documents curation "
                          "starts from; for config/demo_small.py: python curate.py fetch-demo)")
    todo = [] if only else steps(cfg, args, tasks if tasks is not None else cfg.tasks_dir)
    make(todo)
    if place()[0]:  # the other ranks' part is done
        return 0
    print(f"== release {len(todo) + 1}/{len(todo) + 1}: package into {pos[1]}", flush=True)
    ckpts = package(cfg, pos[1], license)
    print(f"wrote {pos[1]}: {len(ckpts)} checkpoints as Hugging Face folders, the tokenizer, the "
          f"data manifest and order, reports, cards and {SUMS}; check it with "
          f"`python release.py verify {pos[1]}`")
    return 0


if __name__ == "__main__":
    run_command(main, DataError, ValueError)
