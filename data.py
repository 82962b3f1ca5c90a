"""
What a training run reads: documents -> tokenizer -> token shards and manifest -> the batch
of every step. Corpus curation (cleaning, dedup, the demo corpus) is curate.py.

    python data.py tokenize CONFIG [--key=value ...]   raw_data -> data_dir: shards + manifest (alias: prepare;
                                                       train.py runs it when data_dir is missing)
    python data.py show --step S [CONFIG] [--key=value ...]  the text step S trains on, sequence by sequence
    python data.py show --ckpt out/toy/ckpt_0000100 [--step S]  the text of the step that checkpoint saved

tokenize is a stage over shards (Stage, below: the same for corpus curation): independent
tasks over pieces of the input, on --workers local processes, one worker per torchrun rank,
or one Slurm array task; resumable; the same bytes for any number of workers.

The order of training samples is a pure function of (manifest, mixture, seed): batch(step,
rank, world_size) needs nothing else, so a resumed run, a run at another world size and
`show` all see the same data at the same step.
"""
import base64, gzip, hashlib, heapq, itertools, json, os, re, shutil, sys, time, zlib

import numpy as np
import tiktoken
from tqdm import tqdm

from config import ConfigError, TrainConfig, config_from_dict, global_batch, load_config, pop_flag, run_command


# gpt-4's split pattern, but digits one at a time, as MAP-Neo's tokenizer splits them
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
SPECIAL_TOKENS = [EOT, "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|pad|>"]  # ids right after the BPE ranks
MAGIC, VERSION, HEADER_BYTES = 20241124, 1, 32  # shard header: int64 magic, version, bytes per token, token count
TASK_BYTES = int(TrainConfig.shard_mb * 2**20)  # input per task of a stage: curation and tokenize


class DataError(Exception):
    """Bad data on disk: the message names the file and what was expected."""


# -----------------------------------------------------------------------------
# documents: files of documents (.jsonl, .jsonl.gz, .txt) and the pieces a stage's tasks read

DOC_EXTS = (".jsonl", ".jsonl.gz", ".txt")


def input_files(root):
    """(the document files under root, sorted; {extension: [paths]} of the other files). Names
    starting with "." (temporary folders) are passed over; so is the bookkeeping of a folder
    written whole (one with DONE: a stage's output, or data_dir inside raw_data), whose
    documents are its top-level files."""
    if os.path.isfile(root):
        return ([root], {}) if root.lower().endswith(DOC_EXTS) else ([], {os.path.splitext(root)[1]: [root]})
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such file or folder")
    if is_done(root):
        names = sorted(f for f in os.listdir(root) if not f.startswith("."))
        return [os.path.join(root, f) for f in names if f.lower().endswith(DOC_EXTS)], {}
    files, other = [], {}
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        if d != root and is_done(d):  # a folder written whole inside root (token shards, say): its documents only
            files += input_files(d)[0]
            dirs[:] = []
            continue
        for f in sorted(names):
            if not f.startswith("."):
                p = os.path.join(d, f)
                files.append(p) if f.lower().endswith(DOC_EXTS) else other.setdefault(os.path.splitext(f)[1] or f, []).append(p)
    return sorted(files), other


def skipped_note(root, other):
    """One line naming the files under root that are not documents, by extension, or None."""
    if other:
        return (f"{root}: skipped {sum(map(len, other.values()))} files that are not .jsonl, .jsonl.gz or .txt: "
                + ", ".join(f"{len(v)} {k} (e.g. {v[0]})" for k, v in sorted(other.items())))


def plan_pieces(root, files, task_bytes):
    """The input cut into tasks of about task_bytes: each task a list of pieces [file relative to
    root, start, end]. A .jsonl file larger than task_bytes is cut into byte ranges (a piece
    reads the lines that start inside its range); smaller files are grouped whole (end None).
    Depends on the files and their sizes only, never on how many workers will run the tasks."""
    tasks, group, size = [], [], 0
    for path in files:
        rel, n = os.path.relpath(path, root) if path != root else "", os.path.getsize(path)
        split = path.lower().endswith(".jsonl") and n > task_bytes
        if group and (split or size + n > task_bytes):
            tasks.append(group)
            group, size = [], 0
        if split:
            tasks += [[[rel, a, min(a + task_bytes, n)]] for a in range(0, n, task_bytes)]
        else:
            group.append([rel, 0, None])
            size += n
    return tasks + [group] * bool(group)


def _lines_before(path, offset):
    n = 0
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(offset, 1 << 24))
            if not block:
                break
            n, offset = n + block.count(b"\n"), offset - len(block)
    return n


def read_piece(root, rel, start=0, end=None, problems=None):
    """Yield the documents of one piece of an input file as dicts (text, source, id and any other
    fields): the whole file, or the lines of a .jsonl file that start in [start, end). A
    document's source is its "source" field, else the first path component under root (a
    file's name without extension, or a sub-folder's name); its id is its "id" field, else
    file:line. Bad lines and unreadable files go to problems (file:line: why), never stop."""
    path = os.path.join(root, rel) if rel else root
    rel = rel or os.path.basename(root)
    default_source = re.sub(r"(\.jsonl\.gz|\.jsonl|\.txt)$", "", rel.split(os.sep)[0], flags=re.I)
    problems = [] if problems is None else problems
    if path.lower().endswith(".txt"):
        raw = open(path, "rb").read()
        text = raw.decode("utf-8-sig", errors="replace")
        if "\ufffd" in text and "\ufffd".encode() not in raw:
            problems.append(f"{path}: invalid UTF-8, bad bytes replaced by U+FFFD")
        yield dict(text=text, source=default_source, id=rel)
        return
    base, k = (0 if not start else None), 0  # lines before the piece: counted only if an id or a problem needs them

    def lineno():
        nonlocal base
        if base is None:
            base = _lines_before(path, first)
        return base + k

    where = lambda: f"{path}:{lineno()}"

    try:
        with (gzip.open if path.lower().endswith(".gz") else open)(path, "rb") as f:
            if start:
                f.seek(start - 1)
                if f.read(1) != b"\n":  # the line that starts before the piece belongs to the one before
                    f.readline()
            first = pos = f.tell()
            for raw in f:
                if end is not None and pos >= end:
                    break
                pos, k = pos + len(raw), k + 1
                line = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                except (ValueError, RecursionError) as e:
                    problems.append(f"{where()}: not JSON ({getattr(e, 'msg', type(e).__name__)})")
                    continue
                if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                    problems.append(f"{where()}: no string field 'text'")
                    continue
                if "\ufffd" in line and b"\xef\xbf\xbd" not in raw:
                    problems.append(f"{where()}: invalid UTF-8, bad bytes replaced by U+FFFD")
                yield {**doc, "source": str(doc.get("source") or default_source),
                       "id": str(doc.get("id") or f"{rel}:{lineno()}")}
    except (OSError, EOFError, zlib.error) as e:  # a truncated .gz, a file gone: the rest goes on
        problems.append(f"{path}: unreadable after line {k} ({type(e).__name__}: {e})")


def iter_records(root, problems):
    """Every document under root (see read_piece), in file order; files that are not documents
    are named in problems."""
    files, other = input_files(root)
    if skipped_note(root, other):
        problems.append(skipped_note(root, other))
    for path in files:
        yield from read_piece(root, os.path.relpath(path, root) if path != root else "", problems=problems)


def iter_documents(root, problems):
    """(source, text) of every document under root (see iter_records)."""
    for doc in iter_records(root, problems):
        yield doc["source"], doc["text"]


def report_problems(problems, where, total=None, path=None):
    """Print the first 20 problems; the rest as a count and the file that has them all."""
    total = len(problems) if total is None else total
    for p in problems[:20]:
        print(f"warning: {p}", file=sys.stderr)
    if total > 20:
        print(f"warning: ... and {total - 20} more problems in {where}" + (f" (all of them: {path})" if path else ""),
              file=sys.stderr)


def sample_documents(root, chars, seed=0):
    """A bounded sample of the documents under root for a tokenizer, every source alike: each
    source's documents in a seeded random order (a hash of the text), the first ones up to
    chars / sources characters (the one that crosses it included) as the sample, the next ones
    up to as much again as held-out text. One pass, never much more than 2 x chars in memory.
    Returns (sample texts in corpus order, {source: held-out texts}; a source with nothing left
    over holds out its whole sample), problems."""
    problems, heaps, total = [], {}, {}  # per source: a max-heap on priority of (-priority, position, text)

    def trim(source, budget):
        h = heaps[source]
        while h and total[source] - len(h[0][2]) >= budget:  # the rest still reaches the budget
            total[source] -= len(heapq.heappop(h)[2])

    for pos, (source, text) in enumerate(tqdm(iter_documents(root, problems), desc=f"sampling {root}",
                                              unit=" docs", disable=None)):
        prio = int.from_bytes(hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest(), "little")
        new = source not in heaps
        heapq.heappush(heaps.setdefault(source, []), (-prio, pos, text))
        total[source] = total.get(source, 0) + len(text)
        for s in (heaps if new else [source]):  # a new source shrinks every source's share
            trim(s, 2 * chars / len(heaps))
    sample, held = [], {}
    for source, h in heaps.items():
        docs, n = sorted(h, key=lambda x: (-x[0], x[1])), 0  # priority order
        for j, (_, pos, text) in enumerate(docs):
            if n >= chars / len(heaps):
                held[source] = [t for _, _, t in docs[j:]]
                break
            sample.append((pos, text))
            n += len(text)
        held[source] = held.get(source) or [t for _, _, t in docs]
    return [t for _, t in sorted(sample)], held, problems


# -----------------------------------------------------------------------------
# folders written whole (token shards, curation stages, checkpoints): under a temporary name
# beside the final one, then DONE, then renamed, so a crash never leaves a half-written folder
# under the final name, and a folder with DONE is complete

DONE = "DONE"


def tmp_dir(final, create=True):
    """A new, empty folder beside final (.tmp_<name>) to write final's contents in (only its
    name with create=False: the ranks that write into the folder rank 0 made)."""
    final = final.rstrip(os.sep)
    tmp = os.path.join(os.path.dirname(final), ".tmp_" + os.path.basename(final))
    if create:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    return tmp


def commit_dir(tmp, final, done=""):
    """Complete a folder written in tmp: its files on disk (so a power cut cannot reorder them),
    then DONE (holding done), then tmp renamed to final. An older final is renamed away first
    and removed after, so no crash leaves a complete-looking folder without its files."""
    for d, _, files in os.walk(tmp):
        for name in files:
            with open(os.path.join(d, name), "rb+") as f:
                os.fsync(f.fileno())
    with open(os.path.join(tmp, DONE), "w") as f:
        f.write(done)
        os.fsync(f.fileno())
    final = final.rstrip(os.sep)
    old = os.path.join(os.path.dirname(final), ".del_" + os.path.basename(final))
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def is_done(path):
    return os.path.exists(os.path.join(path, DONE))


def read_meta(ckpt):
    """meta.json of a complete checkpoint (train.py writes it): the run's config, the step, the
    data position, the manifest's sha256, the sums of the other files; checked against the
    sha256 that DONE holds (older checkpoints have an empty DONE)."""
    if not os.path.isdir(ckpt):
        raise ConfigError(f"checkpoint not found: {ckpt}")
    if not is_done(ckpt):
        raise ConfigError(f"{ckpt}: not a complete checkpoint (no {DONE} marker)")
    path = os.path.join(ckpt, "meta.json")
    try:
        done = open(os.path.join(ckpt, DONE)).read().strip()
        want = json.loads(done)["meta.json"] if done else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{os.path.join(ckpt, DONE)}: unreadable ({e}): the checkpoint is damaged") from None
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing: the checkpoint is damaged")
    if want and sha256_file(path) != want:
        raise DataError(f"{path}: sha256 differs from the one {DONE} recorded (the file is damaged or was edited)")
    try:
        meta = json.load(open(path))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or not {"step", "config"} <= meta.keys():
        raise DataError(f"{path}: not a checkpoint's meta.json (no step and config)")
    return meta


# -----------------------------------------------------------------------------
# stages: work over a corpus of any size as independent tasks (datatrove's model). A stage
# plans its tasks from the input files alone (plan_pieces), runs them in phases, each task
# writing a folder of its own whole (tmp_dir -> commit_dir), and assembles the output folder
# from them. So the same command runs as N local processes, one worker per torchrun rank or
# one Slurm array task (a shared filesystem holds the folders); a rerun skips every task with
# DONE, so a stage killed halfway resumes where it stopped; and a task's output depends on
# its inputs only, so the result is the same bytes for any number of workers.

def launcher():
    """(rank, world) of this process among a stage's workers: the RANK and WORLD_SIZE that
    torchrun sets (any launcher may set them), else a Slurm array's task id and count, else
    (0, 1): one machine, with local worker processes."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    if "SLURM_ARRAY_TASK_COUNT" in env:
        return int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0)), int(env["SLURM_ARRAY_TASK_COUNT"])
    return 0, 1


def _write_json(path, obj):
    with open(path + ".part", "w") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False, sort_keys=True)
    os.replace(path + ".part", path)


def _read_json(path):
    """The JSON in path, or None when it is not there (yet, or any more) or half written."""
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None


def _run_task(job):
    """One task: fn(stage, i, folder) fills a fresh temporary folder, which becomes final whole."""
    stage, final, fn, i, args = job
    tmp = tmp_dir(final)
    t0 = time.time()
    fn(stage, i, tmp, *args)
    commit_dir(tmp, final)
    return time.time() - t0


class Stage:
    """A folder out_dir made from the documents under src by tasks; settings (anything that
    changes the result) and the input files' names, sizes and times are its key: a rerun with
    the same key resumes, any other starts over. workers: local processes (0: every core);
    rank, world: this process among world workers (launcher()), each running its share."""

    def __init__(self, name, src, out_dir, settings, task_bytes, workers=0, rank=0, world=1, setup=None):
        self.name, self.root, self.out_dir, self.rank, self.world = name, src, out_dir.rstrip(os.sep), rank, world
        self.tmp = tmp_dir(self.out_dir, create=False)
        self.workers = 1 if world > 1 else workers or os.cpu_count() or 1
        self.seconds, self._tasks, self._pool, self.sizes = {}, None, None, []
        if is_done(self.out_dir):
            return
        files, other = input_files(src)
        if not files:
            raise DataError(f"{src}: no documents found (looked for .jsonl, .jsonl.gz and .txt files)")
        self.skipped = skipped_note(src, other)
        self._tasks = plan_pieces(src, files, max(1, int(task_bytes)))
        size = {os.path.relpath(p, src) if p != src else "": os.path.getsize(p) for p in files}
        self.sizes = [sum((b if b is not None else size[f]) - a for f, a, b in t) for t in self._tasks]
        plan = dict(stage=name, settings=settings, tasks=self._tasks)
        key = dict(plan, files=[[os.path.relpath(p, src) if p != src else "", os.stat(p).st_size, os.stat(p).st_mtime_ns]
                                for p in files])
        key_path, key = os.path.join(self.tmp, "key.json"), json.loads(json.dumps(key))
        if rank == 0:
            if _read_json(key_path) == key:
                print(f"{name}: resuming {self.tmp} ({self.finished()} tasks finished)")
            else:
                tmp_dir(self.out_dir)  # anything there was made from other inputs or settings
                if setup:
                    setup(self.tmp)
                _write_json(os.path.join(self.tmp, "plan.json"), plan)
                _write_json(key_path, key)  # last: the other workers start when it is there
        else:
            self._wait(lambda: self.done or _read_json(key_path) == key, f"rank 0 to plan {self.tmp}")

    @property
    def done(self):
        return is_done(self.out_dir)

    @property
    def tasks(self):
        """The pieces of every task (plan.json, read once per process)."""
        if self._tasks is None:
            self._tasks = json.load(open(os.path.join(self.tmp, "plan.json")))["tasks"]
        return self._tasks

    def __getstate__(self):  # what goes to a worker process: not the plan, which it reads itself
        return {**self.__dict__, "_tasks": None, "_pool": None, "sizes": []}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def documents(self, i, problems):
        """The documents of task i, in order."""
        for rel, start, end in self.tasks[i]:
            yield from read_piece(self.root, rel, start, end, problems)

    def path(self, phase, i=None):
        """The folder of task i of phase (or of the whole phase)."""
        return os.path.join(self.tmp, "work", phase, *([] if i is None else [f"{i:06d}"]))

    def finished(self):
        return sum(len(fs) for _, _, fs in os.walk(os.path.join(self.tmp, "work")) if DONE in fs)

    def run(self, phase, n, fn, *args):
        """Run tasks 0..n-1 of phase, fn(stage, i, folder, *args) each, and return when all n are
        done (by any worker). A task with DONE is not run again; nothing runs once the whole
        stage is (the other workers may have finished it while this one was on its way)."""
        t0 = time.time()
        if self.done:
            return
        mine = [i for i in range(n) if i % self.world == self.rank]
        todo = [i for i in mine if not is_done(self.path(phase, i))]
        if len(todo) < len(mine):
            print(f"{self.name} {phase}: {len(mine) - len(todo)} of {len(mine)} tasks already done")
        if n == len(self.sizes):  # tasks over the input: the largest first, so that none is left to run alone
            todo.sort(key=lambda i: -self.sizes[i])
        jobs = [(self, self.path(phase, i), fn, i, args) for i in todo]
        mine = len(mine)
        with tqdm(total=mine, initial=mine - len(todo), desc=f"{self.name} {phase}", unit=" tasks", disable=None) as bar:
            if self.workers > 1 and len(jobs) > 1:
                if self._pool is None:  # spawned, not forked: fresh processes, whatever threads this one has
                    import multiprocessing
                    self._pool = multiprocessing.get_context("spawn").Pool(self.workers)
                for _ in self._pool.imap_unordered(_run_task, jobs):
                    bar.update()
            else:
                for job in jobs:
                    _run_task(job)
                    bar.update()
        left = [self.path(phase, i) for i in range(n)]
        while left and not self.done:  # the tasks of other workers
            left = [p for p in left if not is_done(p)]
            if left:
                self._wait(lambda: self.done or is_done(left[0]), f"{len(left)} tasks of {phase} that other workers run")
        self.seconds[phase] = round(time.time() - t0, 3)

    def finish(self, assemble):
        """Rank 0: assemble(folder) writes the outputs from the tasks' folders, then the work is
        removed and the folder becomes out_dir whole. The other ranks wait for that."""
        if self.rank == 0:
            assemble(self.tmp)
            shutil.rmtree(os.path.join(self.tmp, "work"), ignore_errors=True)
            os.remove(os.path.join(self.tmp, "key.json"))
            commit_dir(self.tmp, self.out_dir)
        else:
            self._wait(lambda: is_done(self.out_dir), f"rank 0 to write {self.out_dir}")

    def write_problems(self, folder, problems_of_tasks):
        """folder/problems.log: the problems of each task (an iterable of lists, read one task at
        a time), then the files that are not documents; the first 20 printed. Returns the count."""
        shown, count = [], 0
        with open(os.path.join(folder, "problems.log"), "w", encoding="utf-8") as log:
            for problems in itertools.chain(problems_of_tasks, [[self.skipped] if self.skipped else []]):
                log.writelines(p + "\n" for p in problems)
                shown += problems[:max(0, 21 - len(shown))]
                count += len(problems)
        report_problems(shown, self.root, count, os.path.join(self.out_dir, "problems.log"))
        return count

    def move(self, phase, i, name, dest):
        """Move a file of a finished task to dest (a rerun after a crash here finds it moved)."""
        src = os.path.join(self.path(phase, i), name)
        if os.path.exists(src):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(src, dest)
        elif not os.path.exists(dest):
            raise DataError(f"{src}: missing from a finished task")

    def _wait(self, ready, what):
        t0 = last = time.time()
        while not ready():
            if time.time() - last > 60:
                print(f"{self.name}: rank {self.rank} of {self.world} waiting {time.time() - t0:.0f} s for {what}",
                      file=sys.stderr)
                last = time.time()
            time.sleep(0.5)


# -----------------------------------------------------------------------------
# tokenizer: a .tiktoken file of BPE ranks (+ a .json beside it with the split pattern and the
# special tokens, appended after the ranks), the name of a tiktoken encoding, or a released
# model's Hugging Face tokenizer.json (HFTokenizer, below)

def train_tokenizer(texts, vocab_size, path):
    """A byte-level BPE of vocab_size tokens (plus SPECIAL_TOKENS) learnt from texts by rustbpe,
    written to path (.tiktoken) and path.json."""
    import rustbpe
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size, pattern=SPLIT_PATTERN)
    with open(path, "w") as f:
        for token, rank in sorted(tok.get_mergeable_ranks(), key=lambda x: x[1]):
            f.write(f"{base64.b64encode(bytes(token)).decode()} {rank}\n")
    with open(path + ".json", "w") as f:
        json.dump(dict(pat_str=tok.get_pattern(), special_tokens=SPECIAL_TOKENS), f, indent=1)
    enc = load_tokenizer(path)
    if enc.n_vocab - len(SPECIAL_TOKENS) < vocab_size:
        print(f"warning: the BPE stopped at {enc.n_vocab - len(SPECIAL_TOKENS)} of the {vocab_size} tokens asked: "
              "the text has no more pairs to merge", file=sys.stderr)
    return enc


def read_tiktoken(path):
    """(ranks {bytes: rank}, split pattern, special tokens {name: id}) of a .tiktoken file."""
    if not os.path.exists(path):
        raise DataError(f"tokenizer file not found: {path}")
    ranks = {}
    for lineno, line in enumerate(open(path), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected '<base64 token> <rank>', got {line.strip()!r}") from None
    side = json.load(open(path + ".json")) if os.path.exists(path + ".json") else {}
    specials = side.get("special_tokens", SPECIAL_TOKENS)
    return ranks, side.get("pat_str", SPLIT_PATTERN), {s: len(ranks) + i for i, s in enumerate(specials)}


def load_tokenizer(spec):
    """A tiktoken.Encoding from a .tiktoken path or a tiktoken encoding name (e.g. cl100k_base),
    or an HFTokenizer from a tokenizer.json (or a folder holding one: a released model's). Either
    has bos_ids (put before a text: none for tiktoken) and prefix_token (before an empty one)."""
    if spec.endswith(".json") or os.path.isdir(spec):
        return HFTokenizer(spec)
    if spec.endswith(".tiktoken") or os.path.exists(spec):
        ranks, pat, specials = read_tiktoken(spec)
        enc = tiktoken.Encoding(os.path.basename(spec), pat_str=pat, mergeable_ranks=ranks, special_tokens=specials)
        enc.bos_ids, enc.prefix_token = [], enc.eot_token
        return enc
    try:
        enc = tiktoken.get_encoding(spec)
    except Exception as e:
        raise DataError(f"cannot load tokenizer {spec!r}: not a .tiktoken file, and tiktoken says: {e} "
                        "(named encodings download their file on first use)") from None
    if EOT not in enc.special_tokens_set:
        raise DataError(f"tokenizer {spec!r} has no {EOT} token")
    enc.bos_ids, enc.prefix_token = [], enc.eot_token
    return enc


def tokenizer_of(data_dir, manifest):
    t = manifest["tokenizer"]
    return load_tokenizer(os.path.join(data_dir, t) if t.endswith((".tiktoken", ".json")) else t)


def tokenizer_size(cfg):
    """Tokens in the vocabulary of cfg's tokenizer: data_dir's when it is prepared, else the one
    tokenize would use: its file or tiktoken name, or a BPE (tokenizer_vocab + the special
    tokens) when that is to be trained (tokenizer="bpe", or a file curate.py has not written yet)."""
    if is_done(cfg.data_dir):
        return tokenizer_of(cfg.data_dir, load_manifest(cfg.data_dir, verify=False)).n_vocab
    t = cfg.tokenizer
    if t != "bpe" and (os.path.exists(t) or not (t.endswith((".tiktoken", ".json")) or os.sep in t)):
        return load_tokenizer(t).n_vocab
    return cfg.tokenizer_vocab + len(SPECIAL_TOKENS)


def byte_to_unicode():
    """GPT-2's printable stand-ins for the 256 bytes, which byte-level BPE vocabularies are written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs, cs, n = bs + [b], cs + [256 + n], n + 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _token_name(value):
    # tokenizer_config.json writes a token as "</s>" or as {"content": "</s>", ...}
    return value.get("content") if isinstance(value, dict) else value


class HFTokenizer:
    """A Hugging Face tokenizer.json, the tokenizer a released model ships (LLaMA's 32k that
    Amber uses, MAP-Neo's 64k, byte-level BPEs like ours), run as written by the `tokenizers`
    library, as transformers' PreTrainedTokenizerFast runs it; behind it, the part of
    tiktoken's Encoding that nano360 uses. As with tiktoken's encode_ordinary, special tokens
    in a text are text (a document holding "</s>" is not cut there) and encode_ordinary adds
    nothing around a text; bos_ids are what the file's post-processor puts before one (LLaMA's
    <s>), which transformers' tokenizer(text), and so lm-eval, include: tokenize and eval.py
    put them there too. End-of-text is the eos token of tokenizer_config.json beside the file
    (else config.json's eos_token_id); prefix_token, what lm-eval puts before a text with no
    context, its bos token when there is one."""

    NAMES = {"eos": ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"), "bos": ("<s>", "<|begin_of_text|>", "<bos>")}

    def __init__(self, spec):
        path = os.path.join(spec, "tokenizer.json") if os.path.isdir(spec) else spec
        if not os.path.isfile(path):
            raise DataError(f"{spec}: no tokenizer.json there")
        try:
            import tokenizers
        except ImportError:
            raise DataError(f"{path}: a tokenizer.json is read by the tokenizers library: pip install tokenizers") from None
        try:
            self.tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # tokenizers' own message says what is wrong with the file
            raise DataError(f"{path}: not a tokenizer.json that tokenizers can read: {e}") from None
        self.tok.encode_special_tokens = True  # special tokens in text are text
        self.name, self.path, self.n_vocab = path, path, self.tok.get_vocab_size(with_added_tokens=True)
        added = self.tok.get_added_tokens_decoder()
        self.special_tokens_set = {t.content for t in added.values() if t.special}
        self.eot_token = self._special(path, "eos")
        if self.eot_token is None:
            raise DataError(f"{path}: cannot tell its end-of-text token: no eos_token in a tokenizer_config.json "
                            f"beside it, no eos_token_id in a config.json, none of {self.NAMES['eos']} in it")
        bos = self._special(path, "bos")
        self.prefix_token = self.eot_token if bos is None else bos
        plain, framed = (self.tok.encode("a", add_special_tokens=b).ids for b in (False, True))
        self.bos_ids = next((framed[:i] for i in range(len(framed)) if framed[i:i + len(plain)] == plain), [])
        decoder = json.loads(self.tok.decoder.__getstate__()) if self.tok.decoder else {}
        self.byte_level = "ByteLevel" in [d.get("type") for d in [decoder] + decoder.get("decoders", [])]

    def _special(self, path, kind):
        # the eos / bos token's id: tokenizer_config.json, config.json, then the usual names
        folder = os.path.dirname(path)
        side = os.path.join(folder, "tokenizer_config.json")
        name = _token_name(json.load(open(side, encoding="utf-8")).get(f"{kind}_token")) if os.path.exists(side) else None
        if name is not None:
            i = self.tok.token_to_id(name)
            if i is None:
                raise DataError(f"{side}: {kind}_token {name!r} is not a token of {path}")
            return i
        conf = os.path.join(folder, "config.json")
        i = json.load(open(conf)).get(f"{kind}_token_id") if os.path.exists(conf) else None
        if i is not None:
            return i[0] if isinstance(i, list) else int(i)
        return next((i for i in map(self.tok.token_to_id, self.NAMES[kind]) if i is not None), None)

    def encode_ordinary(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_ordinary_batch(self, texts, num_threads=None):
        if num_threads:  # tokenizers' threads (rayon's pool, made on first use): a worker's share of the cores
            os.environ.setdefault("RAYON_NUM_THREADS", str(num_threads))
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def encode_single_token(self, token):
        i = self.tok.token_to_id(token)
        if i is None:
            raise KeyError(token)
        return i

    def decode(self, ids):
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def decode_bytes(self, ids):
        # byte-level: each token's exact bytes (a piece may end inside a character); otherwise the
        # decoder's text (SentencePiece-style: "▁" is a space, the one it prepends is stripped)
        if self.byte_level:
            return b"".join(self.token_bytes[i] for i in ids)
        return self.decode(ids).encode("utf-8")

    def decode_single_token_bytes(self, i):
        return self.token_bytes[i]

    @property
    def token_bytes(self):
        # the bytes of every token, once: byte-level stand-ins undone, or "▁" as space and <0xNN> as a byte
        if not hasattr(self, "_bytes"):
            inv, out = {c: b for b, c in byte_to_unicode().items()}, []
            added = {i: t.content for i, t in self.tok.get_added_tokens_decoder().items()}
            for i in range(self.n_vocab):
                t = added.get(i) or self.tok.id_to_token(i) or ""
                if i in added:
                    out.append(t.encode())
                elif self.byte_level:
                    out.append(bytes(inv[c] for c in t) if all(c in inv for c in t) else t.encode())
                elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
                    out.append(bytes([int(t[3:5], 16)]))
                else:
                    out.append(t.replace("▁", " ").encode())
            self._bytes = out
        return self._bytes


# -----------------------------------------------------------------------------
# shards and manifest

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_shard(path, tokens):
    header = np.array([MAGIC, VERSION, tokens.itemsize, len(tokens)], dtype="<i8")
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(tokens.dtype.newbyteorder("<")).tobytes())


def read_shard(path):
    """The tokens of a shard as a read-only memmap, after checking its header and size."""
    if not os.path.exists(path):
        raise DataError(f"{path}: shard missing")
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise DataError(f"{path}: truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, version, itemsize, count = np.fromfile(path, dtype="<i8", count=4).tolist()
    if magic != MAGIC:
        raise DataError(f"{path}: not a nano360 token shard (magic {magic}, expected {MAGIC})")
    if version != VERSION or itemsize not in (2, 4):
        raise DataError(f"{path}: unsupported shard version {version} / token size {itemsize} bytes")
    if size != HEADER_BYTES + count * itemsize:
        raise DataError(f"{path}: truncated or corrupt: the header says {count:,} tokens "
                        f"({HEADER_BYTES + count * itemsize:,} bytes) but the file has {size:,} bytes")
    return np.memmap(path, dtype="<u2" if itemsize == 2 else "<u4", mode="r", offset=HEADER_BYTES, shape=(count,))


def load_manifest(data_dir, verify=True):
    """manifest.json of data_dir, every shard's header checked and, with verify, its sha256."""
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        raise DataError(f"{path}: no manifest (run `python data.py prepare` to build {data_dir})")
    try:
        manifest = json.load(open(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    for s in tqdm(manifest["shards"], desc="checking shards", disable=not verify or len(manifest["shards"]) < 50):
        shard = os.path.join(data_dir, s["file"])
        n = len(read_shard(shard))
        if n != s["tokens"]:
            raise DataError(f"{shard}: holds {n:,} tokens, {path} says {s['tokens']:,}")
        digest = sha256_file(shard) if verify else s["sha256"]
        if digest != s["sha256"]:
            raise DataError(f"{shard}: sha256 {digest} does not match {path} ({s['sha256']}): "
                            "the shard changed since it was written")
    manifest["sha256"] = sha256_file(path)  # what checkpoints record
    return manifest


def _safe(source):
    # a file name for a source; a hash keeps apart two sources that differ only where it changes
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", source)
    return safe if safe == source else f"{safe}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"


class TokenWriter:
    """Token shards of one source, written as documents come: name_0000.bin, name_0001.bin, ...
    of at most shard_tokens tokens each, the header's count filled in when a shard closes."""

    def __init__(self, folder, name, dtype, shard_tokens):
        self.folder, self.name, self.dtype, self.cap = folder, name, dtype, shard_tokens
        self.files, self.f, self.n = [], None, 0  # files: [file, tokens] of the closed shards

    def write(self, tokens):
        tokens = np.asarray(tokens, dtype=self.dtype)
        while len(tokens):
            if self.f is None:
                self.files.append([f"{self.name}_{len(self.files):04d}.bin", 0])
                self.f, self.n = open(os.path.join(self.folder, self.files[-1][0]), "wb"), 0
                self.f.write(bytes(HEADER_BYTES))
            part, tokens = tokens[:self.cap - self.n], tokens[self.cap - self.n:]
            self.f.write(part.astype(part.dtype.newbyteorder("<")).tobytes())
            self.n += len(part)
            if self.n == self.cap:
                self.close()

    def close(self):
        if self.f is not None:
            self.f.seek(0)
            self.f.write(np.array([MAGIC, VERSION, np.dtype(self.dtype).itemsize, self.n], dtype="<i8").tobytes())
            self.f.close()
            self.files[-1][1], self.f = self.n, None
        return self.files


def prepare(raw_data, data_dir, tokenizer="bpe", vocab_size=4096, val_frac=0.05, shard_tokens=100_000_000,
            sample_chars=50_000_000, task_bytes=TASK_BYTES, workers=0, rank=0, world=1):
    """Tokenize the documents under raw_data into data_dir, a stage (see Stage): the tokenizer
    (tokenizer="bpe": trained on a sample of sample_chars characters, sample_documents), each
    task's documents tokenized into shards as they come, then manifest.json, with the last
    val_frac of each source's tokens as its val split. A complete data_dir is left as it is."""
    settings = dict(tokenizer=tokenizer, vocab_size=vocab_size, val_frac=val_frac, shard_tokens=shard_tokens,
                    sample_chars=sample_chars)
    with Stage("tokenize", raw_data, data_dir, settings, task_bytes, workers, rank, world,
               setup=lambda tmp: _tokenizer_into(tmp, tokenizer, vocab_size, raw_data, sample_chars)) as st:
        if st.done:
            print(f"tokenize: {data_dir} is complete ({DONE}); delete it to tokenize again")
            return load_manifest(data_dir)
        t0, threads = time.time(), max(1, (os.cpu_count() or 1) // st.workers)
        st.run("tokenize", len(st.tasks), _tokenize_task, shard_tokens, threads)
        st.finish(lambda tmp: _assemble_tokens(st, tmp, raw_data, settings, time.time() - t0))
    for source, s in load_manifest(data_dir, verify=False)["sources"].items():
        print(f"{source}: {s['documents']} documents, {s['train_tokens']:,} train + {s['val_tokens']:,} val tokens, "
              f"{s['characters'] / (s['train_tokens'] + s['val_tokens']):.2f} characters per token")
    return load_manifest(data_dir)


def _tokenize_task(st, i, out, shard_tokens, threads):
    entry = json.load(open(os.path.join(st.tmp, "work", "tokenizer.json")))["tokenizer"]
    enc = tokenizer_of(st.tmp, dict(tokenizer=entry))
    dtype = np.uint16 if enc.n_vocab <= 65536 else np.uint32
    problems, sources, writers, batch = [], {}, {}, []


    def flush():  # bos_ids: a released tokenizer's own framing, LLaMA's <s> text </s>
        for (source, _), ids in zip(batch, enc.encode_ordinary_batch([t for _, t in batch], num_threads=threads)):
            writers[source].write(enc.bos_ids + ids + [enc.eot_token])
        batch.clear()

    for doc in st.documents(i, problems):
        source, text = doc["source"], doc["text"]
        if source not in writers:
            writers[source] = TokenWriter(out, _safe(source), dtype, shard_tokens)
            sources[source] = dict(documents=0, characters=0, bytes=0)
        s = sources[source]
        s["documents"], s["characters"], s["bytes"] = s["documents"] + 1, s["characters"] + len(text), s["bytes"] + len(text.encode())
        batch.append((source, text))
        if len(batch) == 256:  # tiktoken encodes a batch on several threads (no GIL)
            flush()
    flush()
    for source, w in writers.items():
        sources[source]["shards"] = [[f, n, sha256_file(os.path.join(out, f))] for f, n in w.close()]
    _write_json(os.path.join(out, "task.json"), dict(sources=sources, problems=problems))


def _assemble_tokens(st, tmp, raw_data, settings, seconds):
    """manifest.json from the tasks' shards: per source, in task order, its first tokens train and
    the last val_frac val; the one shard that straddles the cut is written again as two."""
    n, info = len(st.tasks), json.load(open(os.path.join(tmp, "work", "tokenizer.json")))
    task = lambda i: json.load(open(os.path.join(st.path("tokenize", i), "task.json")))
    parts, sources = {}, {}  # per source: its shards in task order, its counts

    def each_task():
        for i in range(n):
            t = task(i)
            for source, s in t["sources"].items():
                parts.setdefault(source, []).extend((i, *shard) for shard in s["shards"])
                c = sources.setdefault(source, dict(documents=0, characters=0, bytes=0))
                for k in c:
                    c[k] += s[k]
            yield t["problems"]
    problems = st.write_problems(tmp, each_task())
    val_frac, shards, size = settings["val_frac"], [], sum(s["bytes"] for s in sources.values())
    for source in sorted(parts):
        total = sum(n for _, _, n, _ in parts[source])
        cut = total - max(1, int(total * val_frac)) if val_frac > 0 else total
        made = {"train": [], "val": []}

        def add(split, src=None, tokens=None, digest=None):
            name = os.path.join(tmp, f"{split}_{_safe(source)}_{len(made[split]):04d}.bin")
            if src is not None:
                st.move("tokenize", src[0], src[1], name)
            elif tokens is not None:
                write_shard(name, tokens)
            made[split].append(dict(file=os.path.basename(name), split=split, source=source,
                                    tokens=len(read_shard(name)), sha256=digest or sha256_file(name)))

        a = 0
        for i, f, k, digest in parts[source]:
            path = os.path.join(st.path("tokenize", i), f)
            if a + k <= cut or a >= cut:
                add("train" if a + k <= cut else "val", (i, f), digest=digest)
            else:  # the cut falls inside: two new shards (on a rerun after a crash, already there)
                whole = read_shard(path) if os.path.exists(path) else None
                for split, piece in (("train", slice(0, cut - a)), ("val", slice(cut - a, None))):
                    add(split, tokens=None if whole is None else np.array(whole[piece]))
                if whole is not None:
                    del whole
                    os.remove(path)
            a += k
        shards += made["train"] + made["val"]
        s = sources[source]
        sources[source] = dict(documents=s["documents"], characters=s["characters"], train_tokens=int(cut),
                               val_tokens=int(total - cut))
    made = dict(raw_data=raw_data, tokenizer=settings["tokenizer"], val_frac=val_frac)
    if settings["tokenizer"] == "bpe":  # the vocabulary asked only means something for a BPE trained here
        made["tokenizer_vocab"] = settings["vocab_size"]
    manifest = dict(version=VERSION, prepared_with=made,
                    tokenizer=info["tokenizer"], n_vocab=info["n_vocab"], eot=info["eot"], dtype=info["dtype"],
                    val_frac=val_frac, sources=sources, shards=shards, problems=problems)
    _write_json(os.path.join(tmp, "manifest.json"), manifest)
    _write_json(os.path.join(tmp, "timing.json"), dict(seconds=round(seconds, 3), phases=st.seconds, bytes=size,
                                                       workers=st.workers, world=st.world, cores=os.cpu_count()))
    print(f"tokenize: {size / 1e6:.1f} MB in {seconds:.1f} s, {size / 1e6 / max(seconds, 1e-9) / st.workers:.1f} MB/s "
          f"per worker, {st.workers} worker{'s' * (st.workers > 1)}" + f" x {st.world} ranks" * (st.world > 1))


def prepared(cfg):
    """The manifest of cfg's data_dir, tokenizing raw_data into it first if it is not there yet
    (what train.py does on first use), its shards checked (sha256 too with verify_data)."""
    if not is_done(cfg.data_dir):
        if not os.path.exists(cfg.raw_data):
            raise DataError(f"{cfg.data_dir} is not prepared and raw_data={cfg.raw_data!r} is not there to prepare it from")
        print(f"preparing {cfg.data_dir} from {cfg.raw_data} (once)")
        tokenize(cfg)
    manifest = load_manifest(cfg.data_dir, verify=cfg.verify_data)
    stale = [f"{k}={v!r} (config: {getattr(cfg, k)!r})" for k, v in manifest["prepared_with"].items() if getattr(cfg, k) != v]
    if stale:
        print(f"warning: {cfg.data_dir}/manifest.json was prepared with {', '.join(stale)}; using it as it is "
              "(delete it and `python data.py tokenize` rebuilds it)", file=sys.stderr)
    return manifest


def tokenize(cfg, rank=0, world=1):
    """prepare() with cfg's keys: raw_data -> data_dir."""
    return prepare(cfg.raw_data, cfg.data_dir, cfg.tokenizer, cfg.tokenizer_vocab, cfg.val_frac,
                   sample_chars=cfg.tokenizer_sample, task_bytes=cfg.shard_mb * 2**20, workers=cfg.workers,
                   rank=rank, world=world)


def _tokenizer_into(tmp, tokenizer, vocab_size, raw_data, sample_chars):
    """The tokenizer of a data_dir, into its folder tmp: a BPE trained on a sample of the
    documents, a copy of a user's .tiktoken file (so data_dir is self-contained), or a tiktoken
    name; what the tasks need to know of it in work/tokenizer.json."""
    path = os.path.join(tmp, "tokenizer.tiktoken")
    if tokenizer == "bpe":
        enc, entry = train_tokenizer(sample_documents(raw_data, sample_chars)[0], vocab_size, path), "tokenizer.tiktoken"
    elif tokenizer.endswith(".json") or os.path.isdir(tokenizer):  # a released tokenizer.json, and its eos / bos
        enc, entry = HFTokenizer(tokenizer), "tokenizer.json"
        shutil.copy(enc.path, os.path.join(tmp, entry))
        names = {f"{k}_token": enc.tok.id_to_token(i) for k, i in (("eos", enc.eot_token), ("bos", enc.prefix_token))}
        _write_json(os.path.join(tmp, "tokenizer_config.json"), names)  # what the tokenizer is read with
    elif os.path.exists(tokenizer):
        for ext in ("", ".json"):
            if os.path.exists(tokenizer + ext):
                shutil.copy(tokenizer + ext, path + ext)
        enc, entry = load_tokenizer(path), "tokenizer.tiktoken"
    else:
        enc, entry = load_tokenizer(tokenizer), tokenizer
    os.makedirs(os.path.join(tmp, "work"))
    _write_json(os.path.join(tmp, "work", "tokenizer.json"), dict(tokenizer=entry, n_vocab=enc.n_vocab, eot=enc.eot_token,
                                                                  dtype="uint16" if enc.n_vocab <= 65536 else "uint32"))


# -----------------------------------------------------------------------------
# sample order: a keyed pseudo-random permutation per epoch, computed for just the positions asked

def splitmix64(x):
    """splitmix64's finaliser on uint64 arrays: a cheap, well-mixed hash (wrapping arithmetic is the point)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def permute(i, n, seed, epoch):
    """Positions i of a pseudo-random permutation of range(n) keyed by (seed, epoch): a 4-round
    Feistel network on the smallest even number of bits covering n, cycle-walking past values
    >= n. O(len(i)) work, so a 550M-sample epoch needs no 4 GB permutation table."""
    half = max(1, ((int(n) - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = splitmix64(np.array([seed, epoch, 0, 0], dtype=np.uint64) + np.arange(4, dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019))
    keys = splitmix64(keys ^ splitmix64(keys[:1] ^ keys[1:2]))
    x = np.asarray(i, dtype=np.uint64).copy()
    todo = np.ones(len(x), dtype=bool)
    while todo.any():
        left, right = x[todo] >> np.uint64(half), x[todo] & mask
        for k in keys:
            left, right = right, left ^ (splitmix64(right ^ k) & mask)
        x[todo] = (left << np.uint64(half)) | right
        todo = x >= np.uint64(n)
    return x.astype(np.int64)


MIX_BLOCK = 4096  # samples per block of a mixture: exact proportions within every block


def _key(*parts):
    # a 63-bit key from strings and numbers, the same on every machine
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class Batches:
    """The training samples: windows of seq_len + 1 tokens at multiples of seq_len in every train
    shard, global_batch of them per step. Without a mixture, every window once per epoch, in a
    new pseudo-random order each epoch. With a mixture [(start_step, {source: weight}), ...],
    each phase draws its sources in those proportions (exactly, within every block of
    MIX_BLOCK samples) and each source walks its own windows epoch after epoch, so a small
    source with a large weight is upsampled. Either way the sample of any position is a pure
    function of (manifest, mixture, seed)."""

    def __init__(self, data_dir, seq_len, global_batch, seed, verify=True, mixture=(), fim_rate=0.0, fim_spm_rate=0.5,
                 fim_sources=("code",)):
        self.manifest = load_manifest(data_dir, verify)
        self.seq_len, self.global_batch, self.seed = seq_len, global_batch, seed
        if global_batch <= 0:
            raise ValueError(f"global_batch must be positive, got {global_batch}")
        entries = [s for s in self.manifest["shards"] if s["split"] == "train"]
        self.shards = [read_shard(os.path.join(data_dir, s["file"])) for s in entries]
        self.files, self.sources = [s["file"] for s in entries], [s["source"] for s in entries]
        self.offsets = np.cumsum([0] + [max(0, (len(t) - 1) // seq_len) for t in self.shards])
        self.n = int(self.offsets[-1])
        if self.n == 0:
            raise DataError(f"{data_dir}: no train shard holds seq_len + 1 = {seq_len + 1} tokens")
        # each source's windows are one contiguous range of sample ids (shards are listed by source)
        self.span = {}
        for k, src in enumerate(self.sources):
            lo, hi = self.span.get(src, (int(self.offsets[k]), 0))
            self.span[src] = (lo, int(self.offsets[k + 1]))
        self.phases, self.phase_fim = [], []
        for start, weights, *options in sorted(mixture or [], key=lambda ph: ph[0]):
            extra = set(options[0]) - {"fim_rate", "fim_spm_rate"} if options else set()
            if len(options) > 1 or extra:
                raise DataError(f"mixture phase at step {start}: (start_step, weights) or (start_step, weights, "
                                f"{{'fim_rate': r, 'fim_spm_rate': s}}), got extra {options if len(options) > 1 else extra}")
            self.phase_fim.append(({**dict(fim_rate=fim_rate, fim_spm_rate=fim_spm_rate), **(options[0] if options else {})}))
            unknown = sorted(set(weights) - set(self.span))
            if unknown or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
                raise DataError(f"mixture phase at step {start}: weights {weights} must be >= 0, not all 0, over "
                                f"sources of {data_dir} ({', '.join(sorted(self.span))}); unknown: {unknown}")
            names = sorted(w for w in weights if weights[w] > 0 and self.span[w][1] > self.span[w][0])
            share = np.array([weights[w] for w in names], dtype=np.float64)
            share = share / share.sum() * MIX_BLOCK
            counts = np.floor(share).astype(np.int64)  # largest remainder: the block holds exactly MIX_BLOCK
            counts[np.argsort(-(share - counts), kind="stable")[:MIX_BLOCK - counts.sum()]] += 1
            self.phases.append((int(start) * global_batch, names, counts))
        if self.phases and self.phases[0][0] != 0:
            raise DataError(f"the first mixture phase must start at step 0, not {self.phases[0][0] // global_batch}")
        self.fim_default, self.fim_sources = dict(fim_rate=fim_rate, fim_spm_rate=fim_spm_rate), set(fim_sources)
        self.fim = fim_rate > 0 or any(f["fim_rate"] > 0 for f in self.phase_fim)
        if self.fim:
            enc = tokenizer_of(data_dir, self.manifest)
            missing = [t for t in SPECIAL_TOKENS[1:4] if t not in enc.special_tokens_set]
            if missing:
                raise DataError(f"{data_dir}: fim_rate > 0 needs the tokens {', '.join(SPECIAL_TOKENS[1:4])}; "
                                f"its tokenizer {self.manifest['tokenizer']} lacks {', '.join(missing)}")
            self.fim_ids = [enc.encode_single_token(t) for t in SPECIAL_TOKENS[1:4]]  # prefix, middle, suffix
            self.eot = self.manifest["eot"]
        self._blocks = {}

    @classmethod
    def from_config(cls, cfg, global_batch, verify=False):
        """The samples of a run of cfg (a TrainConfig) at global_batch sequences per step: the
        one way training, `show` and eval.py's memorization build them."""
        return cls(cfg.data_dir, cfg.seq_len, global_batch, cfg.seed, verify, cfg.mixture, cfg.fim_rate,
                   cfg.fim_spm_rate, cfg.fim_sources)

    def _block(self, p, b):
        """Phase p's block b: the source of each slot and how many slots of that source precede it."""
        if (p, b) not in self._blocks:
            names, counts = self.phases[p][1:]
            slots = np.repeat(np.arange(len(names)), counts)[permute(np.arange(MIX_BLOCK), MIX_BLOCK, self.seed, _key(p, b))]
            before = np.zeros(MIX_BLOCK, dtype=np.int64)
            for k in range(len(names)):
                before[slots == k] = np.arange(counts[k])
            if len(self._blocks) > 64:
                self._blocks.clear()
            self._blocks[(p, b)] = slots, before
        return self._blocks[(p, b)]

    def _picks(self, p, length):
        """How many samples each source of phase p gets in its first `length` samples."""
        names, counts = self.phases[p][1:]
        slots, _ = self._block(p, length // MIX_BLOCK)
        rest = np.bincount(slots[:length % MIX_BLOCK], minlength=len(names))
        return {w: int(length // MIX_BLOCK * counts[k] + rest[k]) for k, w in enumerate(names)}

    def _mixed(self, pos):
        starts = [ph[0] for ph in self.phases]
        if not hasattr(self, "_prior"):  # samples of each source in all phases before phase p
            self._prior = [{}]
            for q in range(len(self.phases) - 1):
                picks = self._picks(q, starts[q + 1] - starts[q])
                self._prior.append({w: self._prior[-1].get(w, 0) + picks.get(w, 0) for w in set(picks) | set(self._prior[-1])})
        names, ks = [], []
        for x in pos.tolist():  # which source, and how many of its samples came before this one
            p = int(np.searchsorted(starts, x, side="right")) - 1
            local = x - starts[p]
            slots, before = self._block(p, local // MIX_BLOCK)
            slot = slots[local % MIX_BLOCK]
            names.append(self.phases[p][1][slot])
            ks.append(self._prior[p].get(names[-1], 0) + local // MIX_BLOCK * self.phases[p][2][slot] + before[local % MIX_BLOCK])
        ids, ks, names = np.empty_like(pos), np.array(ks, dtype=np.int64), np.array(names)
        for name in np.unique(names):  # each source walks its windows in a new order every epoch
            lo, hi = self.span[str(name)]
            for epoch in np.unique(ks[names == name] // (hi - lo)):
                sel = (names == name) & (ks // (hi - lo) == epoch)
                ids[sel] = lo + permute(ks[sel] % (hi - lo), hi - lo, self.seed, _key(str(name), int(epoch)))
        return ids

    def epochs(self, steps):
        """Epochs of each source that `steps` steps go through (upsampling shows as > 1)."""
        if not self.phases:
            return {w: steps * self.global_batch / self.n for w in self.span}
        starts, total = [ph[0] for ph in self.phases] + [steps * self.global_batch], {}
        for p in range(len(self.phases)):
            for w, k in self._picks(p, max(0, min(starts[p + 1], starts[-1]) - starts[p])).items():
                total[w] = total.get(w, 0) + k / (self.span[w][1] - self.span[w][0])
        return total

    def sample_ids(self, step, rank=0, world_size=1):
        """The samples of rank's share of step's global batch: disjoint across ranks, without
        replacement within an epoch (of all windows, or of each source under a mixture)."""
        if self.global_batch % world_size:
            raise ValueError(f"global batch of {self.global_batch} sequences cannot be split over {world_size} ranks")
        per_rank = self.global_batch // world_size
        pos = step * self.global_batch + rank * per_rank + np.arange(per_rank, dtype=np.int64)
        if self.phases:
            return self._mixed(pos)
        ids = np.empty_like(pos)
        for epoch in np.unique(pos // self.n):
            sel = pos // self.n == epoch
            ids[sel] = permute(pos[sel] % self.n, self.n, self.seed, int(epoch))
        return ids

    def locate(self, ids):
        """(shard index, first token) of each sample."""
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        return shard, (ids - self.offsets[shard]) * self.seq_len

    def tokens(self, ids, step=0):
        """The windows of samples ids as step trains on them (FIM by the rate of step's phase)."""
        shard, start = self.locate(ids)
        rows = [self.shards[s][a:a + self.seq_len + 1].astype(np.int64) for s, a in zip(shard, start)]
        if self.fim:
            p = int(np.searchsorted([ph[0] for ph in self.phases], step * self.global_batch, side="right")) - 1
            f = self.phase_fim[p] if self.phases else self.fim_default
            rows = [self.fim_row(r, i, f["fim_rate"], f["fim_spm_rate"]) if self.sources[s] in self.fim_sources else r
                    for r, i, s in zip(rows, ids, shard)]
        return np.stack(rows)

    def fim_row(self, row, sample, rate, spm_rate):
        """Fill-in-the-middle on the documents of one window (CrystalCoder's recipe): each piece
        between end-of-text tokens becomes, with probability fim_rate, prefix/middle/suffix at
        two random cuts, in PSM order (<pre> prefix <suf> suffix <mid> middle) or, with
        probability fim_spm_rate, SPM (<pre> <suf> suffix <mid> prefix middle). Deterministic in
        (seed, sample); the 3 sentinels per piece push the window's last tokens out."""
        pre, mid, suf = self.fim_ids
        cuts = np.flatnonzero(row == self.eot)
        out, a = [], 0
        for j, b in enumerate(list(cuts) + [len(row)]):
            piece = row[a:b]
            u = splitmix64(np.array([_key(self.seed, int(sample), j)], dtype=np.uint64)
                     + np.arange(4, dtype=np.uint64)) / np.float64(2 ** 64)
            if len(piece) >= 2 and u[0] < rate:
                i, k = sorted((int(u[1] * (len(piece) + 1)), int(u[2] * (len(piece) + 1))))
                p, m, s = piece[:i], piece[i:k], piece[k:]
                piece = np.concatenate([[pre, suf], s, [mid], p, m] if u[3] < spm_rate else [[pre], p, [suf], s, [mid], m])
            out.append(piece)
            out.append(row[b:b + 1])  # the end-of-text token itself
            a = b + 1
        return np.concatenate(out)[:len(row)].astype(np.int64)

    def batch(self, step, rank=0, world_size=1):
        """(global_batch / world_size, seq_len + 1) int64 tokens: inputs are [:, :-1], targets [:, 1:]."""
        import torch
        return torch.from_numpy(self.tokens(self.sample_ids(step, rank, world_size), step))


def doc_ids(tokens, eot):
    """Document ids (B, T) of packed tokens (B, T), for attention masking: the end-of-text token
    that closes one document opens the next id, so the position that predicts a document's
    first token sees nothing of the document before it."""
    return (tokens == eot).cumsum(1)


def val_sequences(data_dir, manifest, seq_len, max_seqs=0):
    """{source: (n, seq_len + 1) int64} of consecutive windows of each source's val split."""
    out = {}
    for s in manifest["shards"]:
        if s["split"] == "val":
            t = read_shard(os.path.join(data_dir, s["file"]))
            n = (len(t) - 1) // seq_len
            rows = [t[j * seq_len:j * seq_len + seq_len + 1] for j in range(n)]
            out.setdefault(s["source"], []).extend(rows)
    return {src: np.stack(r[:max_seqs or None]).astype(np.int64) for src, r in out.items() if r}


# -----------------------------------------------------------------------------
# command line

def show(cfg, step, gb):
    """Print the text of every sequence of step's global batch (gb sequences), as trained on
    (FIM included)."""
    batches = Batches.from_config(cfg, gb)
    enc = tokenizer_of(cfg.data_dir, batches.manifest)
    ids = batches.sample_ids(step)
    shard, start = batches.locate(ids)
    rows = batches.tokens(ids, step)
    for j, (i, s, a) in enumerate(zip(ids, shard, start)):
        toks = rows[j].tolist()
        print(f"=== step {step} · sequence {j}/{len(ids)} · sample {i} · source {batches.sources[s]} · "
              f"tokens {a}..{a + len(toks)} of {batches.files[s]} ===")
        print(enc.decode(toks))


def main(argv):
    if not argv or argv[0] not in ("prepare", "tokenize", "show"):
        print(__doc__.strip())
        if argv and argv[0] in ("fetch-demo", "clean", "dedup", "train-tokenizer", "pipeline"):
            print(f"\n{argv[0]} is corpus curation: python curate.py {argv[0]} ...")
        return 2
    cmd, rest = argv[0], list(argv[1:])
    step, ckpt = pop_flag(rest, "--step"), pop_flag(rest, "--ckpt")
    if cmd in ("prepare", "tokenize"):
        cfg, _ = load_config(rest)
        tokenize(cfg, *launcher())
        return 0
    if ckpt:  # the run's own config and global batch
        meta = read_meta(ckpt)
        cfg, _ = config_from_dict(meta["config"])
        step = meta["step"] - 1 if step is None else step  # the last step before the save
        gb = meta["data_position"]["global_batch"]
    else:
        cfg, _ = load_config(rest)
        gb = global_batch(cfg, cfg.world_size)  # world_size: the run's, when global_batch_size is 0
    if step is None or not str(step).isdigit():
        raise ConfigError(f"show needs --step S (a step number) or --ckpt DIR, got step={step!r}")
    show(cfg, int(step), gb)
    return 0


if __name__ == "__main__":
    run_command(main, DataError)
