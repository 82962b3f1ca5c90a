"""
What every corpus command shares (curate.py, dedup.py, data.py's tokenize): progress a log can
follow, documents in, folders written whole, the Stage executor (the folder it may write, its
lock, a full disk said in one line), the report and timing writers. Nothing here imports torch;
the fetcher of pinned archives is fetch.py.

A stage turns a folder of documents into an output folder by independent tasks, in the manner
of datatrove: the input is cut into pieces of about shard_mb (plan_pieces), each task writes a
folder of its own whole (tmp_dir -> commit_dir, DONE last), and rank 0 assembles the output
from them. So the same command runs as N local processes, one worker per torchrun rank or one
Slurm array task (a shared filesystem holds the folders); a rerun skips every task with DONE,
so a stage killed halfway resumes where it stopped; and a task's output depends on its inputs
only, so the result is the same bytes for any number of workers.
"""
import contextlib, errno, gzip, hashlib, heapq, itertools, json, os, re, shutil, sys, time, zlib

import numpy as np
from tqdm import tqdm

from guard import (OUTPUT_KEYS, Busy, FileLock, alive, command_id, describe, json_dict,
                   output_problem)


class DataError(Exception):
    """Bad data on disk: the message names the file and what was expected."""


# -----------------------------------------------------------------------------
# progress a log can follow: tqdm (disable=None) draws nothing when stderr is not a terminal,
# so `python curate.py ... > log 2>&1` said nothing for minutes

class Progress:
    """for x in Progress(desc, items): tqdm's bar on a terminal; elsewhere flushed lines on
    stdout, one a minute while it runs (looked at after each item) and one as it ends."""

    def __init__(self, desc, items, unit="", total=None, initial=0, every=60):
        total = len(items) if total is None and hasattr(items, "__len__") else total
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=None)
        self.lines = bool(self.bar.disable)  # read now: closing a bar sets its disable
        self.desc, self.items, self.total, self.unit = desc, items, total, unit
        self.n, self.every, self.t0 = initial, every, time.time()

    def __iter__(self):
        last = time.time()
        try:
            for x in self.items:
                yield x
                self.n += 1
                self.bar.update()
                if time.time() - last >= self.every:
                    last = time.time()
                    self._say("{} after {:.0f} s")
        finally:
            self.bar.close()
        self._say("done, {} in {:.1f} s")

    def _say(self, what):  # what: a format of (the count so far, seconds)
        if self.lines:
            n = f"{self.n:,}" + (f"/{self.total:,}" if self.total is not None else "")
            print(f"{self.desc}: " + what.format(n + self.unit, time.time() - self.t0), flush=True)


# -----------------------------------------------------------------------------
# hashes, and small JSON files written whole

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def splitmix64(x):
    """splitmix64's finaliser on uint64 arrays: a cheap, well-mixed hash (wrapping arithmetic
    is the point)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def write_json(path, obj, indent=1):
    """obj as JSON in path, written under another name and renamed: never half a file."""
    with open(path + ".part", "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False, sort_keys=True)
    os.replace(path + ".part", path)


def read_json(path):
    """The JSON in path, or None when it is not there (yet, or any more) or half written."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# -----------------------------------------------------------------------------
# documents: files of documents (.jsonl, .jsonl.gz, .txt) and the pieces a stage's tasks read

DOC_EXTS = (".jsonl", ".jsonl.gz", ".txt")
ABOUT_CORPUS = re.compile(r"(readme|notice|licen[cs]e|copying)\b", re.I)  # README.md, NOTICE


def input_files(root, links=None):
    """(the document files under root, sorted; {extension: [paths]} of the other files). Passed
    over in silence: names starting with "." (temporary folders); a corpus's documentation,
    README*, NOTICE*, LICENSE*, LICENCE*, COPYING* (any case and extension but .jsonl and
    .jsonl.gz, which hold documents whatever their name); the bookkeeping of a folder written
    whole (with DONE: a stage's output, or tokens_dir inside docs_dir), whose documents are its
    top-level files. Symbolic links are followed, to files and to folders, wherever they point,
    after the rest of the tree; each is named in links (a list: a stage's problems.log) with
    its target, "outside the input" when it leads out of root. A link to a file or folder read
    already (a loop, a second way to one place) is named and not read again; a broken one is
    named and skipped."""
    if os.path.isfile(root):
        if root.lower().endswith(DOC_EXTS):
            return [root], {}
        return [], {os.path.splitext(root)[1]: [root]}
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such file or folder")
    if is_done(root):
        names = sorted(f for f in os.listdir(root) if not f.startswith("."))
        return [os.path.join(root, f) for f in names if f.lower().endswith(DOC_EXTS)], {}
    files, other, seen, later = [], {}, set(), []
    links = [] if links is None else links

    def ident(path):  # the same file or folder, whatever way leads to it
        st = os.stat(path)
        return st.st_dev, st.st_ino

    def add(path):
        seen.add(ident(path))
        if path.lower().endswith(DOC_EXTS):
            files.append(path)
        else:
            name = os.path.basename(path)
            other.setdefault(os.path.splitext(name)[1] or name, []).append(path)

    def walk(top):
        for d, dirs, names in os.walk(top):
            seen.add(ident(d))
            dirs[:] = sorted(x for x in dirs if not x.startswith("."))
            if d != root and is_done(d):  # a folder written whole inside root: its documents only
                files.extend(input_files(d)[0])
                dirs[:] = []
                continue
            later.extend(os.path.join(d, x) for x in dirs if os.path.islink(os.path.join(d, x)))
            dirs[:] = [x for x in dirs if not os.path.islink(os.path.join(d, x))]
            for f in sorted(names):
                jsonl = f.lower().endswith((".jsonl", ".jsonl.gz"))
                if f.startswith(".") or ABOUT_CORPUS.match(f) and not jsonl:
                    continue
                path = os.path.join(d, f)
                (later.append if os.path.islink(path) else add)(path)

    walk(root)
    top = os.path.realpath(root)
    while later:  # links last, so a place is read under its own name when it has one
        path = later.pop(0)
        real = os.path.realpath(path)
        out = "" if real == top or real.startswith(top + os.sep) else ", outside the input"
        note = f"{path}: a symbolic link to {os.readlink(path)}{out}"
        if not os.path.exists(path):
            links.append(f"{note}: broken, skipped")
        elif ident(path) in seen:
            links.append(f"{note}: not read ({real} is read already)")
        else:
            links.append(f"{note}: followed")
            (walk if os.path.isdir(path) else add)(path)
    return sorted(files), other


def skipped_note(root, other):
    """One line naming the files under root that are not documents, by extension, or None."""
    if not other:
        return None
    count = sum(map(len, other.values()))
    kinds = ", ".join(f"{len(v)} {k} (e.g. {v[0]})" for k, v in sorted(other.items()))
    return f"{root}: skipped {count} files that are not .jsonl, .jsonl.gz or .txt: {kinds}"


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
    if group:
        tasks.append(group)
    return tasks


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
    # the lines before the piece are counted only if an id or a problem needs them
    base, k = (0 if not start else None), 0

    def lineno():
        nonlocal base
        if base is None:
            base = _lines_before(path, first)
        return base + k

    def where():
        return f"{path}:{lineno()}"

    try:
        with (gzip.open if path.lower().endswith(".gz") else open)(path, "rb") as f:
            if start:
                f.seek(start - 1)
                if f.read(1) != b"\n":  # the line that starts before the piece is the one before's
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
                source = str(doc.get("source") or default_source)
                yield {**doc, "source": source, "id": str(doc.get("id") or f"{rel}:{lineno()}")}
    except (OSError, EOFError, zlib.error) as e:  # a truncated .gz, a file gone: the rest goes on
        problems.append(f"{path}: unreadable after line {k} ({type(e).__name__}: {e})")


def iter_documents(root, problems):
    """Every document under root (dicts, see read_piece), in file order; files that are not
    documents, and symbolic links, are named in problems."""
    files, other = input_files(root, problems)
    if other:
        problems.append(skipped_note(root, other))
    for path in files:
        yield from read_piece(root, os.path.relpath(path, root) if path != root else "",
                              problems=problems)


def report_problems(problems, where, total=None, path=None):
    """Print the first 20 problems; the rest as a count and the file that has them all."""
    total = len(problems) if total is None else total
    for p in problems[:20]:
        print(f"warning: {p}", file=sys.stderr)
    if total > 20:
        also = f" (all of them: {path})" if path else ""
        print(f"warning: ... and {total - 20} more problems in {where}{also}", file=sys.stderr)


def sample_documents(root, chars, seed=0):
    """A bounded sample of the documents under root for a tokenizer, every source alike: each
    source's documents in a seeded random order (a hash of the text), the first ones up to
    chars / sources characters (the one that crosses it included) as the sample, the next ones
    up to as much again as held-out text. One pass, never much more than 2 x chars in memory.
    Returns (sample texts in corpus order, {source: held-out texts}; a source with nothing left
    over holds out its whole sample), problems."""
    problems, heaps, total = [], {}, {}  # per source: a max-heap of (-priority, position, text)

    def trim(source, budget):
        h = heaps[source]
        while h and total[source] - len(h[0][2]) >= budget:  # the rest still reaches the budget
            total[source] -= len(heapq.heappop(h)[2])

    docs = Progress(f"sampling {root}", iter_documents(root, problems), " docs")
    for pos, doc in enumerate(docs):
        source, text = doc["source"], doc["text"]
        digest = hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()
        new = source not in heaps
        heapq.heappush(heaps.setdefault(source, []), (-int.from_bytes(digest, "little"), pos, text))
        total[source] = total.get(source, 0) + len(text)
        for s in (heaps if new else [source]):  # a new source shrinks every source's share
            trim(s, 2 * chars / len(heaps))
    sample, held = [], {}
    for source, h in heaps.items():
        ranked, n = sorted(h, key=lambda x: (-x[0], x[1])), 0  # priority order
        for j, (_, pos, text) in enumerate(ranked):
            if n >= chars / len(heaps):
                held[source] = [t for _, _, t in ranked[j:]]
                break
            sample.append((pos, text))
            n += len(text)
        held[source] = held.get(source) or [t for _, _, t in ranked]
    return [t for _, t in sorted(sample)], held, problems


# -----------------------------------------------------------------------------
# folders written whole (token shards, curation stages, checkpoints): under a temporary name
# beside the final one, then DONE, then renamed, so a crash never leaves a half-written folder
# under the final name, and a folder with DONE is complete

DONE, LOCK = "DONE", "LOCK"


def tmp_dir(final, create=True, keep=()):
    """A new, empty folder beside final (.tmp_<name>) to write final's contents in (only its
    name with create=False: the ranks that write into the folder rank 0 made); the names in
    keep stay (a stage's LOCK)."""
    final = final.rstrip(os.sep)
    tmp = os.path.join(os.path.dirname(final), ".tmp_" + os.path.basename(final))
    if create and keep and os.path.isdir(tmp):
        for path in (os.path.join(tmp, n) for n in sorted(set(os.listdir(tmp)) - set(keep))):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    elif create:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    return tmp


def commit_dir(tmp, final, done=""):
    """Complete a folder written in tmp: its files on disk (so a power cut cannot reorder them),
    then DONE (holding done: a dict is written as JSON, such as a stage's {"stage": name}), then
    tmp renamed to final. An older final is renamed away first and removed after, so no crash
    leaves a complete-looking folder without its files."""
    for d, _, files in os.walk(tmp):
        for name in files:
            with open(os.path.join(d, name), "rb+") as f:
                os.fsync(f.fileno())
    with open(os.path.join(tmp, DONE), "w") as f:
        f.write(done if isinstance(done, str) else json.dumps(done))
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


def written_by(path):
    """What wrote the complete folder path: the stage its DONE names, "train.py" for a
    checkpoint; for the empty DONE of older nano360, the stage its plan.json names, else
    "tokenize" when it holds a manifest.json; None when nothing tells."""
    try:
        with open(os.path.join(path, DONE), encoding="utf-8") as f:
            done = json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None
    if isinstance(done, dict):
        return done.get("stage") or ("train.py" if "meta.json" in done else None)
    plan = read_json(os.path.join(path, "plan.json"))
    if isinstance(plan, dict) and isinstance(plan.get("stage"), str):
        return plan["stage"]
    return "tokenize" if os.path.exists(os.path.join(path, "manifest.json")) else None


def already_done(path, what, marker=DONE):
    """True (and says so) when path is complete: what made it is not run again. A folder that
    another stage completed is a DataError: it is not what's to use or to replace."""
    if not os.path.exists(os.path.join(path, marker) if marker else path):
        return False
    made = written_by(path) if marker == DONE else None
    if made not in (None, what):
        raise DataError(f"{path}: holds {made}'s complete output (its {DONE} says so), not "
                        f"{what}'s; choose an empty or new {OUTPUT_KEYS.get(what, 'folder')}")
    print(f"{what}: {path} is complete{f' ({marker})' if marker else ''}; delete it to redo {what}")
    return True


# -----------------------------------------------------------------------------
# the Stage executor

def _run_task(job):
    """One task: fn(stage, i, folder) fills a fresh temporary folder, which becomes final whole
    (one that fails is removed: the space it took, back)."""
    stage, final, fn, i, args = job
    tmp, t0 = tmp_dir(final), time.time()
    try:
        fn(stage, i, tmp, *args)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    commit_dir(tmp, final)
    return time.time() - t0


class Stage:
    """A folder out_dir made from the documents under src by tasks; settings (anything that
    changes the result) and the input files' names, sizes and times are its key: a rerun with
    the same key resumes, any other starts over. workers: local processes (0: every core);
    rank, world: this process among world workers (config.place), each running its share.
    out_dir must be new, empty or the stage's own (guard.output_problem; documents=True: not
    inside src either). Rank 0 plans and assembles holding .tmp_<out_dir>/LOCK: the ranks of
    its command (command_id) join it, another command is refused. A full disk: one line."""

    def __init__(self, name, src, out_dir, settings, task_bytes, workers=0, rank=0, world=1,
                 setup=None, documents=False):
        self.name, self.root, self.out_dir = name, src, out_dir.rstrip(os.sep)
        self.rank, self.world, self.lock = rank, world, None
        self.tmp = tmp_dir(self.out_dir, create=False)
        self.workers = 1 if world > 1 else workers or os.cpu_count() or 1
        self.seconds, self._tasks, self._pool, self.sizes, self.links = {}, None, None, [], []
        if is_done(self.out_dir):
            return
        why = output_problem(name, self.out_dir, self.tmp, src, documents)
        if why:
            raise DataError(why)
        files, other = input_files(src, self.links)
        if not files:
            raise DataError(f"{src}: no documents found "
                            "(looked for .jsonl, .jsonl.gz and .txt files)")
        self.skipped = skipped_note(src, other)
        self._tasks = plan_pieces(src, files, max(1, int(task_bytes)))
        rel = {p: os.path.relpath(p, src) if p != src else "" for p in files}
        size = {rel[p]: os.path.getsize(p) for p in files}
        self.sizes = [sum((b if b is not None else size[f]) - a for f, a, b in t)
                      for t in self._tasks]
        plan = dict(stage=name, settings=settings, tasks=self._tasks)
        stats = [[rel[p], os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in files]
        key_path, key = (os.path.join(self.tmp, "key.json"),
                         json.loads(json.dumps(dict(plan, files=stats))))
        if rank == 0:
            try:
                with self._disk():
                    self._plan(plan, key_path, key, setup)
            except BaseException:
                self.__exit__()  # the lock let go
                raise
        else:
            me, lock = command_id(), os.path.join(self.tmp, LOCK)

            def planned():  # by rank 0 of this command, not by another command
                holder = json_dict(lock)
                if holder.get("command", me) != me and alive(holder):
                    self._busy(holder)
                return self.done or holder.get("command") == me and read_json(key_path) == key
            self._wait(planned, f"rank 0 to plan {self.tmp}")

    def _plan(self, plan, key_path, key, setup):
        """Rank 0: the lock, then the plan, or the one there when its key is the same."""
        os.makedirs(self.tmp, exist_ok=True)
        try:
            self.lock = FileLock(os.path.join(self.tmp, LOCK))
        except Busy as e:
            self._busy(e.holder)
        if self.lock.taken_over:
            print(f"{self.lock.path}: taking over the lock of a command that is gone "
                  f"({describe(self.lock.taken_over)})")
        if self.done:  # finished by another command while this one looked
            self.__exit__()
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif read_json(key_path) == key:
            print(f"{self.name}: resuming {self.tmp} ({self.finished()} tasks finished)")
        else:  # anything there was made from other inputs or settings
            tmp_dir(self.out_dir, keep=(LOCK,))
            if setup:
                setup(self.tmp)
            write_json(os.path.join(self.tmp, "plan.json"), plan)
            write_json(key_path, key)  # last: the other workers start when it is there

    def _busy(self, holder):
        path = os.path.join(self.tmp, LOCK)
        raise DataError(f"{self.out_dir}: {self.name} is running on it in another command "
                        f"({describe(holder)}; {path}): wait for it to end, or choose another "
                        f"{OUTPUT_KEYS.get(self.name, 'output folder')}; if none is running, "
                        f"delete {path}")

    @contextlib.contextmanager
    def _disk(self):
        """A full disk (or a file size limit) as one line: the folder, the free space, and that
        a rerun resumes (the finished tasks are kept)."""
        try:
            yield
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(self.tmp))).free
            raise DataError(f"{self.out_dir}: writing it failed: {e.strerror} "
                            f"({free / 2**30:.2f} GiB free on that disk; {self.finished()} "
                            f"finished tasks kept in {self.tmp}): make room, then rerun to "
                            "resume") from None

    @property
    def done(self):
        return is_done(self.out_dir)

    @property
    def tasks(self):
        """The pieces of every task (plan.json, read once per process)."""
        if self._tasks is None:
            self._tasks = read_json(os.path.join(self.tmp, "plan.json"))["tasks"]
        return self._tasks

    def __getstate__(self):  # what goes to a worker process: not the plan, which it reads itself
        return {**self.__dict__, "_tasks": None, "_pool": None, "sizes": [], "lock": None}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def documents(self, i, problems):
        """The documents of task i, in order."""
        for rel, start, end in self.tasks[i]:
            yield from read_piece(self.root, rel, start, end, problems)

    def path(self, phase, i=None):
        """The folder of task i of phase (or of the whole phase)."""
        return os.path.join(self.tmp, "work", phase, *([] if i is None else [f"{i:06d}"]))

    def finished(self):
        return sum(DONE in fs for _, _, fs in os.walk(os.path.join(self.tmp, "work")))

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
        if n == len(self.sizes):  # tasks over the input: the largest first, none left to run alone
            todo.sort(key=lambda i: -self.sizes[i])
        jobs = [(self, self.path(phase, i), fn, i, args) for i in todo]
        runs = map(_run_task, jobs)  # lazily: each task as the progress below asks for it
        if self.workers > 1 and len(jobs) > 1:
            # spawned, not forked: fresh processes, whatever threads this one has
            if self._pool is None:
                import multiprocessing
                self._pool = multiprocessing.get_context("spawn").Pool(self.workers)
            runs = self._pool.imap_unordered(_run_task, jobs)
        desc = self.name if phase == self.name else f"{self.name} {phase}"
        with self._disk():
            for _ in Progress(desc, runs, " tasks", len(mine), len(mine) - len(todo)):
                pass
        left = [self.path(phase, i) for i in range(n)]
        while left and not self.done:  # the tasks of other workers
            left = [p for p in left if not is_done(p)]
            if left:
                self._wait(lambda: self.done or is_done(left[0]),
                           f"{len(left)} tasks of {phase} that other workers run")
        self.seconds[phase] = round(time.time() - t0, 3)

    def finish(self, assemble):
        """Rank 0: assemble(folder) writes the outputs from the tasks' folders, then the work is
        removed and the folder becomes out_dir whole. The other ranks wait for that."""
        if self.done:  # (another command finished it while this one planned)
            return
        if self.rank == 0:
            with self._disk():
                assemble(self.tmp)
                shutil.rmtree(os.path.join(self.tmp, "work"), ignore_errors=True)
                os.remove(os.path.join(self.tmp, "key.json"))
                commit_dir(self.tmp, self.out_dir, dict(stage=self.name))
            self.lock.release(moved_to=os.path.join(self.out_dir, LOCK))  # it went along
            self.lock = None
        else:
            self._wait(lambda: is_done(self.out_dir), f"rank 0 to write {self.out_dir}")

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
                print(f"{self.name}: rank {self.rank} of {self.world} waiting "
                      f"{time.time() - t0:.0f} s for {what}", file=sys.stderr)
                last = time.time()
            time.sleep(0.5)

    # --- what a stage writes beside its outputs: problems.log, report.json, timing.json

    def write_problems(self, folder, problems_of_tasks):
        """folder/problems.log: the problems of each task (an iterable of lists, read one task at
        a time), then the symbolic links of the input and the files that are not documents; the
        first 20 printed. Returns the count."""
        shown, count = [], 0
        skipped = [self.links + ([self.skipped] if self.skipped else [])]
        with open(os.path.join(folder, "problems.log"), "w", encoding="utf-8") as log:
            for problems in itertools.chain(problems_of_tasks, skipped):
                log.writelines(p + "\n" for p in problems)
                shown += problems[:max(0, 21 - len(shown))]
                count += len(problems)
        report_problems(shown, self.root, count, os.path.join(self.out_dir, "problems.log"))
        return count

    def write_timing(self, folder, size, seconds):
        """folder/timing.json, and the stage's throughput in one line."""
        write_json(os.path.join(folder, "timing.json"),
                   dict(seconds=round(seconds, 3), phases=self.seconds, bytes=size,
                        workers=self.workers, world=self.world, cores=os.cpu_count()))
        ranks = f" x {self.world} ranks" if self.world > 1 else ""
        print(f"{self.name}: {size / 1e6:.1f} MB in {seconds:.1f} s, "
              f"{size / 1e6 / max(seconds, 1e-9) / self.workers:.1f} MB/s per worker, "
              f"{self.workers} worker{'s' * (self.workers > 1)}{ranks}")
