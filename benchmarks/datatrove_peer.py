"""The datatrove side of the data-pipeline benchmark: datatrove's own blocks on a folder of .jsonl
documents, timed and measured the same way for every stage, one JSON object on the last line of stdout.

Runs under its own venv, never the project's Python (datatrove pins nothing we use, but it pulls in
spaCy, numpy, huggingface-hub...). Setup, as run on 2026-12-02 (CPU machine, PyPI only):

    python -m venv /work/peers/venv
    /work/peers/venv/bin/pip install 'datatrove[processing]==0.10.1'
    /work/peers/venv/bin/pip install orjson==3.13.0 spacy==3.8.18 jieba==0.42.1

`[processing]` alone is not enough: JsonlReader/JsonlWriter need orjson (datatrove's `[io]` extra,
which would also pull pyarrow and datasets), the English word splitter is spaCy's blank "en"
tokenizer (`spacy` is only in `[multilingual]`; no model download), and the Chinese one is spaCy's
blank "zh" with the jieba segmenter (jieba ships its dictionary; it builds a cache in $TMPDIR on first
use). Everything runs offline: HF_HUB_OFFLINE etc. are set below, the tokenizer is a local file.

Usage (IN is a folder of *.jsonl files, one JSON object a line with "text", "id" and any other
fields, which datatrove keeps as metadata; the top-level *.jsonl files are read in name order):

    PY=/work/peers/venv/bin/python
    $PY benchmarks/datatrove_peer.py filter   IN OUT  --workers N [--c4]
    $PY benchmarks/datatrove_peer.py minhash  IN WORK --workers N [--lang doc|en] [--zh_language cmn_Hani]
    $PY benchmarks/datatrove_peer.py tokenize IN OUT  --tokenizer PATH/tokenizer.json --workers N
    $PY benchmarks/datatrove_peer.py shingles IN      [--lang doc|en]     (diagnostic: words/shingles per lang)
    $PY benchmarks/datatrove_peer.py decont   IN OUT  --items FILE --workers N [--lang doc|en] [--n_grams 12]

  common options:
    --limit_docs K   read only the first K documents (files in name order, lines in order);
                     with --per_file, the first K of each file. The capped copy is written before the
                     clock starts (under OUT's log folder or WORK/input) and is what every stage reads.
    --langs en,zh    keep only documents whose "lang" field is in the list (also before the clock)
    --tasks T        datatrove tasks (default: one per input file, datatrove's usual layout)
    --overwrite      delete OUT/WORK (and the log folder) first; otherwise they must not exist

  filter:   JsonlReader -> GopherRepetitionFilter() -> GopherQualityFilter() [-> C4QualityFilter()]
            -> JsonlWriter(OUT) (plain .jsonl, metadata expanded back to top-level fields).
            Logs/stats go to OUT.datatrove_logs (a sibling, so OUT holds only the kept documents).
  minhash:  datatrove's four-stage example with MinhashConfig() defaults (5-gram word shingles,
            14 buckets x 8 hashes, 64-bit xxhash, seed 1): MinhashDedupSignature (one task per
            file) -> MinhashDedupBuckets (14 tasks, one per bucket) -> MinhashDedupCluster (1 task, so
            it runs in the main process) -> MinhashDedupFilter (one task per file), each a
            LocalPipelineExecutor with depends= on the previous one, run in sequence.
            WORK/out/*.jsonl the kept documents, WORK/removed/*.jsonl the removed ones (the filter's
            exclusion_writer), WORK/removed_ids.txt their ids (one a line, input order).
            --lang doc (default): a document whose "lang" is "zh" is split into words by datatrove's
            Chinese tokenizer (language code --zh_language, default cmn_Hani = spaCy zh + jieba), every
            other document by datatrove's default (English, spaCy blank "en"). datatrove takes one
            language per MinhashDedupSignature block, not per document; the subclass below only switches
            the block's word tokenizer per document, which equals running datatrove once per language
            as FineWeb-2 does. --lang en: datatrove's default (English) for every document.
            NB: datatrove's own code "zh" resolves to spaCy's multilingual "xx" tokenizer, not jieba
            (its tokenizer_assignment.csv loader treats the string "FALSE" as true), hence cmn_Hani.
  tokenize: JsonlReader -> DocumentTokenizer(OUT, tokenizer_name_or_path=local tokenizer.json,
            eos_token=<|endoftext|> when the tokenizer has it (--eos_token to choose), seed=0 so its
            default document shuffle is deterministic; --no_shuffle to turn the shuffle off).
            The HF tokenizers library runs encode_batch on its own thread pool (all cores);
            set RAYON_NUM_THREADS=1 to keep one core per worker.
  decont:   NGramsDecontIndexer.compute_hashes (its own code, called on each item of --items, a .jsonl of
            {"task", "line", "lang", "text"}: every n-gram of the text, as the item's label; the indexer's
            run() imports lighteval for its task registry, which these items do not need) -> one
            <task>.index.hashes file per task, as run() writes them; then JsonlReader -> NGramsDecontFilter
            (exclusion_writer: OUT.datatrove_logs/removed, with contaminated_ngram and _task) -> JsonlWriter(OUT).
            NGramsDecontConfig() defaults: 12-grams, simplify_text's default normalisation, xxhash64.
            --lang doc: Chinese items and documents in jieba words (cmn_Hani), as for minhash; --lang en:
            datatrove's default (English) for all. The index build's CPU time is counted.

The JSON line (also written to OUT.datatrove_logs/result.json or WORK/result.json):
    stage, seconds (wall), cpu_seconds, peak_rss_mb_per_worker, peak_rss_source, main_rss_mb,
    children_maxrss_mb, mb_in, bytes_in, docs_in, docs_out, workers, tasks, and per subcommand extras
    (dropped_by for filter; stages, removed for minhash; tokens_out for tokenize).
  * MB are 1e6 bytes for mb_in (UTF-8 bytes of the "text" fields read); RSS figures are MiB (ru_maxrss/1024).
  * seconds / cpu_seconds cover the datatrove executor runs only (not the input scan, the capped copy,
    or counting the outputs). cpu_seconds = ru_utime+ru_stime of RUSAGE_SELF + RUSAGE_CHILDREN of the
    main process over that span. Workers are not children of the main process: datatrove's default
    start method is forkserver, so they are children of the fork server; the script stops the fork
    server after each stage (multiprocess.forkserver._forkserver._stop()), so that it and the workers it
    has reaped are counted. Each stage therefore starts its own fork server (a Python start-up and the
    import of this script, ~0.4 s CPU), which one long-lived datatrove process would pay once; and
    each executor run starts a multiprocess Manager and a new pool, whose workers import spaCy (and
    jieba) again on their first task. These fixed costs (~1 s CPU a stage at 2 workers) are datatrove's
    and are counted, but they dominate inputs of a few MB: --workers 1 runs the tasks in-process.
  * peak_rss_mb_per_worker: the max, over the processes that ran datatrove tasks, of that process's own
    ru_maxrss (getrusage(RUSAGE_SELF) inside the worker at the end of each task, written to
    <logs>/rusage/NNNNN.json). peak_rss_source says which: "workers (in-worker RUSAGE_SELF)" or, when
    workers == 1 and datatrove runs the tasks in the main process, "main process (tasks run in-process)"
    (then it is the main process's peak so far, and cannot drop from one minhash stage to the next).
    Caveat: a worker is forked from the fork server, which has imported this script (datatrove, numpy,
    loguru...), so its RSS includes those shared copy-on-write pages (~worker_rss_start_mb) that also
    count in every other worker's RSS: the sum over workers overstates the machine's memory.
  * children_maxrss_mb: RUSAGE_CHILDREN ru_maxrss of the main process, the max over all reaped
    descendants; it includes datatrove's multiprocess.Manager() server, forked from the main process
    (so at least the main process's RSS at that moment), hence not a per-worker figure; it is also the
    max since the process started, so in minhash's "stages" it never drops from one stage to the next.

Checked here (2026-12-02, 2 shared CPU cores; venv: Python 3.11.7, datatrove 0.10.1, spacy 3.8.18,
jieba 0.42.1, orjson 3.13.0, tokenizers 0.23.3, numpy 2.4.6, xxhash 3.8.2, multiprocess 0.70.19):
  * minhash, planted copies with 2-3 words (en) or characters (zh) replaced: every detected pair lost
    the copy, never the original, and no unplanted document was removed. Long documents (en median
    12.8k chars, zh median 3.1k): en 39/40 (missed: a 296-char doc), zh 40/40 with either --lang.
    Short ones (en ~830 chars, zh ~125 chars, 2 edits): en 60/60; zh 25/60 with --lang doc (jieba
    words, ~1.6 chars each) and 0/60 with --lang en: spaCy's "en" (and "xx") tokenizer does not split
    Chinese, so after simplify_text turns punctuation into spaces a "word" is a whole clause (~4-5
    chars) and a 125-char poem has ~20 words; documents under 5 words get no signature and are never
    removed. Same removed ids and kept files with --workers 1 and 2.
  * filter: GopherQualityFilter() is English-only (English stop words, word lengths); it drops every
    Chinese document (below_alpha_threshold: the "en" tokenizer makes each Chinese punctuation mark a
    word; above_avg_threshold: clause-long "words"; enough_stop_words) and every Python file.
  * tokenize with nano360's tokenizer.json (eval.export_tokenizer) gives, document by document, the
    same ids as nano360's tiktoken encode_ordinary plus <|endoftext|>; the output files are identical
    from run to run. DocumentTokenizer encodes batch_size=10000 documents at once, so a worker holds
    the Encoding objects of a whole file: ~1.45 GiB peak for the demo's 20 MB zh_poetry.jsonl.
"""
import os

for _k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_k, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DATATROVE_COLORIZE_LOGS", "0")

import argparse
import glob
import json
import resource
import shutil
import sys
import time

import numpy as np
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter, NGramsDecontIndexer
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import create_hash_func
from datatrove.utils.typeshelper import Languages
from datatrove.utils.word_tokenizers import load_word_tokenizer

MIB = 1024  # ru_maxrss is in KiB on Linux


# -----------------------------------------------------------------------------
# measurement

def _rss_now_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu(r):
    return r.ru_utime + r.ru_stime


class MeasuredExecutor(LocalPipelineExecutor):
    """datatrove's LocalPipelineExecutor, unchanged, plus one JSON record per task written from inside the
    process that ran it: its pid, wall and CPU seconds for the task, RSS at the start, ru_maxrss at the end."""

    def _run_for_rank(self, rank, local_rank=0, node_rank=-1):
        t0, r0, rss0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF), _rss_now_mb()
        try:
            return super()._run_for_rank(rank, local_rank, node_rank)
        finally:
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            rec = dict(rank=rank, pid=os.getpid(), in_main=os.getpid() == getattr(self, "main_pid", None),
                       seconds=time.perf_counter() - t0, cpu_seconds=_cpu(r1) - _cpu(r0),
                       rss_start_mb=rss0, maxrss_mb=r1.ru_maxrss / MIB)
            with self.logging_dir.open(f"rusage/{rank:05d}.json", "w") as f:
                f.write(json.dumps(rec))


def _stop_forkserver():
    """Stop datatrove's fork server (multiprocess, the dill fork of multiprocessing) so that its CPU time and
    its reaped workers' land in this process's RUSAGE_CHILDREN. A later Pool starts a new one."""
    try:
        from multiprocess import forkserver
    except ImportError:
        return
    fs = getattr(forkserver, "_forkserver", None)
    if fs is not None and getattr(fs, "_forkserver_pid", None) is not None:
        fs._stop()


def run_measured(name, executor):
    """Run one executor; its wall/CPU/RSS figures as a dict."""
    executor.main_pid = os.getpid()
    t0 = time.perf_counter()
    s0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    executor.run()
    _stop_forkserver()
    seconds = time.perf_counter() - t0
    s1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    recs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(executor.logging_dir.path, "rusage", "*.json")))]
    in_main = any(r["in_main"] for r in recs)
    by_pid = {}
    for r in recs:
        by_pid.setdefault(r["pid"], []).append(r)
    return dict(
        stage=name, seconds=round(seconds, 4),
        cpu_seconds=round(_cpu(s1) - _cpu(s0) + _cpu(c1) - _cpu(c0), 4),
        cpu_seconds_main=round(_cpu(s1) - _cpu(s0), 4),
        cpu_seconds_in_tasks=round(sum(r["cpu_seconds"] for r in recs), 4),
        peak_rss_mb_per_worker=round(max((r["maxrss_mb"] for r in recs), default=0.0), 1),
        peak_rss_source="main process (tasks run in-process)" if in_main else "workers (in-worker RUSAGE_SELF)",
        worker_rss_start_mb=round(max((min(x["rss_start_mb"] for x in v) for v in by_pid.values()), default=0.0), 1),
        main_rss_mb=round(s1.ru_maxrss / MIB, 1),
        children_maxrss_mb=round(c1.ru_maxrss / MIB, 1),
        workers=executor.workers, tasks=executor.tasks, worker_processes=len(by_pid),
    )


def combine(name, parts):
    """Stages run one after another: times add, peaks take the max."""
    out = dict(stage=name,
               seconds=round(sum(p["seconds"] for p in parts), 4),
               cpu_seconds=round(sum(p["cpu_seconds"] for p in parts), 4),
               cpu_seconds_main=round(sum(p["cpu_seconds_main"] for p in parts), 4),
               cpu_seconds_in_tasks=round(sum(p["cpu_seconds_in_tasks"] for p in parts), 4),
               peak_rss_mb_per_worker=max(p["peak_rss_mb_per_worker"] for p in parts),
               peak_rss_source="; ".join(sorted({p["peak_rss_source"] for p in parts})),
               worker_rss_start_mb=max(p["worker_rss_start_mb"] for p in parts),
               main_rss_mb=max(p["main_rss_mb"] for p in parts),
               children_maxrss_mb=max(p["children_maxrss_mb"] for p in parts),
               workers=max(p["workers"] for p in parts))
    return out


# -----------------------------------------------------------------------------
# input: scan (bytes, docs), optionally cap / select, before any clock starts

def jsonl_files(folder):
    files = sorted(glob.glob(os.path.join(folder, "*.jsonl")))
    if not files:
        sys.exit(f"error: no *.jsonl files in {folder}")
    return files


def prepare_input(args, staging_dir):
    """(folder datatrove reads, number of non-empty files, bytes of text, docs). Copies the selected
    documents to staging_dir when --limit_docs or --langs is given; otherwise reads IN as it is."""
    files = jsonl_files(args.input)
    langs = set(args.langs.split(",")) if args.langs else None
    stage = args.limit_docs is not None or langs is not None
    if stage:
        os.makedirs(staging_dir, exist_ok=True)
    n_bytes = n_docs = n_files = 0
    for path in files:
        if not args.per_file and args.limit_docs is not None and n_docs >= args.limit_docs:
            break
        kept_here = 0
        out = open(os.path.join(staging_dir, os.path.basename(path)), "w", encoding="utf-8") if stage else None
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                if args.limit_docs is not None and (kept_here if args.per_file else n_docs) >= args.limit_docs:
                    break
                d = json.loads(line)
                text = d.get("text")
                if not text:
                    continue  # datatrove's reader skips documents without text: not read, not counted
                if langs is not None and d.get("lang") not in langs:
                    continue
                n_bytes += len(text.encode("utf-8"))
                n_docs += 1
                kept_here += 1
                if out:
                    out.write(line if line.endswith("\n") else line + "\n")
        if out:
            out.close()
            if kept_here == 0:
                os.remove(out.name)
        n_files += kept_here > 0
    if n_docs == 0:
        sys.exit("error: no documents selected")
    return (staging_dir if stage else os.path.abspath(args.input)), n_files, n_bytes, n_docs


def reader(folder):
    return JsonlReader(folder, glob_pattern="*.jsonl", recursive=False, compression=None)


def writer(folder):
    return JsonlWriter(folder, compression=None, expand_metadata=True)


def count_lines(folder):
    n = 0
    for p in glob.glob(os.path.join(folder, "*.jsonl")):
        with open(p, "rb") as f:
            n += sum(1 for line in f if line.strip())
    return n


def fresh(path, overwrite):
    """path must not exist (an empty folder is fine); --overwrite deletes it."""
    if os.path.isdir(path) and not os.listdir(path):
        return
    if os.path.exists(path):
        if not overwrite:
            sys.exit(f"error: {path} exists (pass --overwrite to delete it first)")
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def merged_stats(logging_dir):
    p = os.path.join(logging_dir, "stats.json")
    return json.load(open(p)) if os.path.exists(p) else []


def finish(result, where=None):
    if where:
        os.makedirs(where, exist_ok=True)
        with open(os.path.join(where, "result.json"), "w") as f:
            json.dump(result, f, indent=1, ensure_ascii=False)
    sys.stdout.flush()
    os.dup2(_REAL_STDOUT, 1)  # datatrove's console output went to stderr; the JSON line is alone on stdout
    sys.stdout = os.fdopen(os.dup(1), "w")
    print(json.dumps(result, ensure_ascii=False), flush=True)


_REAL_STDOUT = None


def _quiet_stdout():
    """Send everything written to fd 1 (ours, datatrove's, the workers') to stderr until finish()."""
    global _REAL_STDOUT
    sys.stdout.flush()
    _REAL_STDOUT = os.dup(1)
    os.dup2(2, 1)


# -----------------------------------------------------------------------------
# 1. filter

def cmd_filter(args):
    out = os.path.abspath(args.output)
    logs = out.rstrip("/") + ".datatrove_logs"
    fresh(out, args.overwrite), fresh(logs, args.overwrite)
    in_dir, n_files, n_bytes, n_docs = prepare_input(args, os.path.join(logs, "input"))
    tasks = args.tasks or n_files
    pipeline = [reader(in_dir), GopherRepetitionFilter(), GopherQualityFilter()]
    if args.c4:
        pipeline.append(C4QualityFilter())
    pipeline.append(writer(out))
    ex = MeasuredExecutor(pipeline, tasks=tasks, workers=min(args.workers, tasks),
                          logging_dir=os.path.join(logs, "executor"), start_method=args.start_method)
    res = run_measured("filter", ex)
    dropped = {}
    for block in merged_stats(ex.logging_dir.path):
        for k, v in block.get("stats", {}).items():
            if k.startswith("dropped_"):
                dropped[k[len("dropped_"):]] = dropped.get(k[len("dropped_"):], 0) + (v["total"] if isinstance(v, dict) else v)
    res.update(mb_in=round(n_bytes / 1e6, 6), bytes_in=n_bytes, docs_in=n_docs, docs_out=count_lines(out),
               dropped_by=dropped, filters=[type(s).__name__ for s in pipeline[1:-1]], output=out,
               tool="datatrove 0.10.1")
    res = {k: res[k] for k in ("stage", "seconds", "cpu_seconds", "peak_rss_mb_per_worker", "peak_rss_source",
                               "main_rss_mb", "mb_in", "docs_in", "docs_out", "workers")} | res
    finish(res, logs)


# -----------------------------------------------------------------------------
# 2. minhash

class LangMinhashSignature(MinhashDedupSignature):
    """MinhashDedupSignature with the word tokenizer chosen per document from its "lang" metadata
    (lang_map: {doc lang: datatrove language code}); other documents use the block's language."""

    def __init__(self, output_folder, config=None, language=Languages.english, lang_map=None):
        super().__init__(output_folder, config=config, language=language)
        self.lang_map = dict(lang_map or {})
        self.default_tokenizer = self.word_tokenizer

    def run(self, data, rank=0, world_size=1):
        def switching(docs):
            for doc in docs:
                code = self.lang_map.get(doc.metadata.get("lang"))
                self.word_tokenizer = load_word_tokenizer(code) if code else self.default_tokenizer
                if code:
                    self.stat_update(f"words_{code}")
                yield doc
        return super().run(switching(data), rank, world_size)


def lang_map(args):
    return {"zh": args.zh_language} if args.lang == "doc" else {}


def cmd_minhash(args):
    work = os.path.abspath(args.output)
    fresh(work, args.overwrite)
    os.makedirs(work)
    in_dir, n_files, n_bytes, n_docs = prepare_input(args, os.path.join(work, "input"))
    tasks = args.tasks or n_files
    config = MinhashConfig()  # datatrove's defaults
    w = lambda t: min(args.workers, t)
    logs = lambda s: os.path.join(work, "logs", s)
    sm = args.start_method
    stage1 = MeasuredExecutor(
        [reader(in_dir), LangMinhashSignature(os.path.join(work, "signatures"), config=config, lang_map=lang_map(args))],
        tasks=tasks, workers=w(tasks), logging_dir=logs("1_signatures"), start_method=sm)
    stage2 = MeasuredExecutor(
        [MinhashDedupBuckets(os.path.join(work, "signatures"), os.path.join(work, "buckets"), config=config)],
        tasks=config.num_buckets, workers=w(config.num_buckets), logging_dir=logs("2_buckets"), depends=stage1,
        start_method=sm)
    stage3 = MeasuredExecutor(
        [MinhashDedupCluster(os.path.join(work, "buckets"), os.path.join(work, "remove_ids"), config=config,
                             save_cluster_id=args.cluster_ids)],
        tasks=1, workers=1, logging_dir=logs("3_clusters"), depends=stage2, start_method=sm)
    stage4 = MeasuredExecutor(
        [reader(in_dir),
         MinhashDedupFilter(os.path.join(work, "remove_ids"), exclusion_writer=writer(os.path.join(work, "removed")),
                            load_cluster_ids=args.cluster_ids),
         writer(os.path.join(work, "out"))],
        tasks=tasks, workers=w(tasks), logging_dir=logs("4_filter"), depends=stage3, start_method=sm)
    parts = [run_measured(name, ex) for name, ex in
             (("minhash_signatures", stage1), ("minhash_buckets", stage2), ("minhash_cluster", stage3),
              ("minhash_filter", stage4))]
    res = combine("minhash", parts)
    removed = []
    for p in sorted(glob.glob(os.path.join(work, "removed", "*.jsonl"))):
        removed += [json.loads(line)["id"] for line in open(p, encoding="utf-8") if line.strip()]
    with open(os.path.join(work, "removed_ids.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{i}\n" for i in removed)
    if args.cluster_ids:  # every document's cluster (-1: none), kept or removed: WORK/clusters.json
        clusters = {}
        for p in sorted(glob.glob(os.path.join(work, "out", "*.jsonl")) + glob.glob(os.path.join(work, "removed", "*.jsonl"))):
            for line in open(p, encoding="utf-8"):
                if line.strip():
                    d = json.loads(line)
                    clusters[d["id"]] = d.get("minhash_cluster_id", -1)
        with open(os.path.join(work, "clusters.json"), "w", encoding="utf-8") as f:
            json.dump(clusters, f)
    sig_stats = merged_stats(stage1.logging_dir.path)
    signed = sum(b.get("stats", {}).get("total", 0) for b in sig_stats if "MinHash" in b.get("name", ""))
    res.update(mb_in=round(n_bytes / 1e6, 6), bytes_in=n_bytes, docs_in=n_docs,
               docs_out=count_lines(os.path.join(work, "out")), removed=len(removed),
               docs_signed=signed, lang=args.lang, language_map=lang_map(args) or {"*": Languages.english},
               config=str(config), tasks=tasks, output=os.path.join(work, "out"),
               removed_ids=os.path.join(work, "removed_ids.txt"), tool="datatrove 0.10.1",
               stages={p["stage"]: {k: v for k, v in p.items() if k != "stage"} for p in parts})
    res = {k: res[k] for k in ("stage", "seconds", "cpu_seconds", "peak_rss_mb_per_worker", "peak_rss_source",
                               "main_rss_mb", "mb_in", "docs_in", "docs_out", "workers")} | res
    finish(res, work)


# -----------------------------------------------------------------------------
# 3. tokenize

def cmd_tokenize(args):
    out = os.path.abspath(args.output)
    logs = out.rstrip("/") + ".datatrove_logs"
    tok_path = os.path.abspath(args.tokenizer)
    if not os.path.isfile(tok_path):  # datatrove would try the Hub with a name that is not a file
        sys.exit(f"error: tokenizer file not found: {tok_path}")
    from tokenizers import Tokenizer
    vocab = Tokenizer.from_file(tok_path).get_vocab(with_added_tokens=True)
    eos = args.eos_token if args.eos_token is not None else ("<|endoftext|>" if "<|endoftext|>" in vocab else None)
    if eos and eos not in vocab:
        sys.exit(f"error: --eos_token {eos!r} is not in {tok_path}")
    fresh(out, args.overwrite), fresh(logs, args.overwrite)
    in_dir, n_files, n_bytes, n_docs = prepare_input(args, os.path.join(logs, "input"))
    tasks = args.tasks or n_files
    ex = MeasuredExecutor(
        [reader(in_dir),
         DocumentTokenizer(out, tokenizer_name_or_path=tok_path, eos_token=eos or None, seed=0,
                           shuffle_documents=not args.no_shuffle)],
        tasks=tasks, workers=min(args.workers, tasks), logging_dir=os.path.join(logs, "executor"),
        start_method=args.start_method)
    res = run_measured("tokenize", ex)
    tokens = 0
    for block in merged_stats(ex.logging_dir.path):
        v = block.get("stats", {}).get("tokens")
        if v is not None:
            tokens += v["total"] if isinstance(v, dict) else v
    docs_out = 0
    for p in glob.glob(os.path.join(out, "*.ds.index")):
        docs_out += os.path.getsize(p) // 8  # one uint64 document end per document
    res.update(mb_in=round(n_bytes / 1e6, 6), bytes_in=n_bytes, docs_in=n_docs, docs_out=docs_out,
               tokens_out=tokens, eos_token=eos, vocab_size=len(vocab), shuffle_documents=not args.no_shuffle,
               tokenizer=tok_path, output=out, rayon_num_threads=os.environ.get("RAYON_NUM_THREADS"),
               tool="datatrove 0.10.1")
    res = {k: res[k] for k in ("stage", "seconds", "cpu_seconds", "peak_rss_mb_per_worker", "peak_rss_source",
                               "main_rss_mb", "mb_in", "docs_in", "docs_out", "workers")} | res
    finish(res, logs)


# -----------------------------------------------------------------------------
# diagnostic: what MinhashDedupSignature's shingling makes of each language

def cmd_shingles(args):
    import tempfile
    from datatrove.utils.text import ngrams, simplify_text
    with tempfile.TemporaryDirectory() as tmp:
        in_dir, _, _, _ = prepare_input(args, tmp)
        sig = LangMinhashSignature(os.path.join(tmp, "sig"), lang_map=lang_map(args))
        per = {}
        for path in jsonl_files(in_dir):
            for line in open(path, encoding="utf-8"):
                d = json.loads(line)
                if not d.get("text"):
                    continue
                code = sig.lang_map.get(d.get("lang"))
                tok = load_word_tokenizer(code) if code else sig.default_tokenizer
                words = tok.word_tokenize(simplify_text(d["text"], sig.config.norm_config))
                n_sh = len(set(ngrams(words, sig.config.n_grams)))
                s = per.setdefault(d.get("lang"), dict(docs=0, words=0, chars=0, shingles=0, no_shingles=0,
                                                       tokenizer=code or Languages.english, sample=None))
                s["docs"] += 1
                s["words"] += len(words)
                s["chars"] += sum(map(len, words))
                s["shingles"] += n_sh
                s["no_shingles"] += n_sh == 0
                if s["sample"] is None:
                    s["sample"] = words[:12]
    for s in per.values():
        s["chars_per_word"] = round(s["chars"] / max(s["words"], 1), 2)
        s["words_per_doc"] = round(s["words"] / s["docs"], 1)
    finish(dict(stage="shingles", lang=args.lang, per_lang=per))


# -----------------------------------------------------------------------------
# 4. n-gram decontamination

class LangDecontFilter(NGramsDecontFilter):
    """NGramsDecontFilter with the word tokenizer chosen per document from its "lang" metadata."""

    def __init__(self, index_folder, config=None, exclusion_writer=None, lang_map=None):
        super().__init__(index_folder, config=config, exclusion_writer=exclusion_writer)
        self.lang_map, self.default_tokenizer = dict(lang_map or {}), self.tokenizer

    def filter(self, doc):
        code = self.lang_map.get(doc.metadata.get("lang"))
        self.tokenizer = load_word_tokenizer(code) if code else self.default_tokenizer
        return super().filter(doc)


def cmd_decont(args):
    out = os.path.abspath(args.output)
    logs = out.rstrip("/") + ".datatrove_logs"
    fresh(out, args.overwrite), fresh(logs, args.overwrite)
    in_dir, n_files, n_bytes, n_docs = prepare_input(args, os.path.join(logs, "input"))
    config, index = NGramsDecontConfig(n_grams=args.n_grams), os.path.join(logs, "index")
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    me = argparse.Namespace(config=config, hash_func=create_hash_func(config.hash_config), tokenizer=None)
    hashes = {}
    for line in open(args.items, encoding="utf-8"):
        item = json.loads(line)
        code = lang_map(args).get(item["lang"])
        me.tokenizer = load_word_tokenizer(code or Languages.english)
        hashes.setdefault(item["task"].replace("/", "__"), set()).update(
            NGramsDecontIndexer.compute_hashes(me, item["text"]))
    os.makedirs(index)
    for task, h in hashes.items():
        np.array(sorted(h), dtype=config.hash_config.np_descr).tofile(os.path.join(index, f"{task}.index.hashes"))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    built = dict(seconds=time.perf_counter() - t0, cpu_seconds=_cpu(r1) - _cpu(r0))
    tasks = args.tasks or n_files
    ex = MeasuredExecutor([reader(in_dir), LangDecontFilter(index, config, writer(os.path.join(logs, "removed")),
                                                            lang_map(args)), writer(out)],
                          tasks=tasks, workers=min(args.workers, tasks), logging_dir=os.path.join(logs, "executor"),
                          start_method=args.start_method)
    res = run_measured("decont", ex)
    res["seconds"] = round(res["seconds"] + built["seconds"], 4)
    res["cpu_seconds"] = round(res["cpu_seconds"] + built["cpu_seconds"], 4)
    removed = []
    for p in sorted(glob.glob(os.path.join(logs, "removed", "*.jsonl"))):
        removed += [{k: d.get(k) for k in ("id", "contaminated_task", "contaminated_ngram")}
                    for d in map(json.loads, open(p, encoding="utf-8"))]
    res.update(mb_in=round(n_bytes / 1e6, 6), bytes_in=n_bytes, docs_in=n_docs, docs_out=count_lines(out),
               index=dict(built, hashes=sum(map(len, hashes.values()))), removed=removed, lang=args.lang,
               config=str(config), tool="datatrove 0.10.1")
    finish(res, logs)


# -----------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, output=True):
        sp.add_argument("input", help="folder of *.jsonl files")
        if output:
            sp.add_argument("output")
            sp.add_argument("--workers", type=int, default=1)
            sp.add_argument("--tasks", type=int, default=None, help="default: one per input file")
            sp.add_argument("--overwrite", action="store_true")
            sp.add_argument("--start_method", default="forkserver", help="datatrove's default: forkserver")
        sp.add_argument("--limit_docs", type=int, default=None)
        sp.add_argument("--per_file", action="store_true", help="--limit_docs counts per file")
        sp.add_argument("--langs", default=None, help="comma list of 'lang' values to keep")
        return sp

    s = common(sub.add_parser("filter", help="Gopher repetition + quality filters"))
    s.add_argument("--c4", action="store_true", help="add C4QualityFilter() after the Gopher filters")
    for name in ("minhash", "shingles"):
        s = common(sub.add_parser(name), output=name == "minhash")
        s.add_argument("--lang", choices=("doc", "en"), default="doc")
        if name == "minhash":
            s.add_argument("--cluster_ids", action="store_true", help="WORK/clusters.json: every document's cluster")
        s.add_argument("--zh_language", default=Languages.mandarin_chinese__hani,
                       help="datatrove language code for lang=zh documents (default cmn_Hani: spaCy zh + jieba)")
    s = common(sub.add_parser("tokenize"))
    s.add_argument("--tokenizer", required=True, help="a local HF tokenizer.json")
    s.add_argument("--eos_token", default=None, help="default <|endoftext|> when the tokenizer has it; '' for none")
    s.add_argument("--no_shuffle", action="store_true")
    s = common(sub.add_parser("decont"))
    s.add_argument("--items", required=True, help=".jsonl of {task, line, lang, text}")
    s.add_argument("--lang", choices=("doc", "en"), default="doc")
    s.add_argument("--zh_language", default=Languages.mandarin_chinese__hani)
    s.add_argument("--n_grams", type=int, default=12, help="NGramsDecontConfig's default: 12")
    args = p.parse_args(argv)
    if getattr(args, "workers", 1) < 1:
        p.error("--workers must be >= 1")
    _quiet_stdout()
    dict(filter=cmd_filter, minhash=cmd_minhash, tokenize=cmd_tokenize, shingles=cmd_shingles,
         decont=cmd_decont)[args.cmd](args)


if __name__ == "__main__":
    main()
