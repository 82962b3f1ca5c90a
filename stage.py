"""
What every corpus command shares (curate.py, dedup.py, data.py's tokenize): progress a log can
follow, the documents in (the input's files, cut into pieces at line boundaries, read and
sampled), folders written whole (tmp_dir -> commit_dir, DONE last), and what tells a complete
output. The Stage executor that runs a stage's tasks over these is executor.py. Nothing here
imports torch; the fetcher of pinned archives is fetch.py.
"""
import contextlib, errno, gzip, hashlib, heapq, itertools, json, os, re, shutil, socket, sys, time
import zlib

import numpy as np
from tqdm import tqdm

from guard import OUTPUT_KEYS


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

def sha256_file(path, size=None):
    """sha256 of the file at path, or of its first size bytes."""
    h, left = hashlib.sha256(), float("inf") if size is None else size
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(int(min(1 << 20, left))), b""):
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def splitmix64(x):
    """splitmix64's finaliser on uint64 arrays: a cheap, well-mixed hash (wrapping arithmetic
    is the point)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_WRITES = itertools.count()  # the writes of this process, each under its own name


@contextlib.contextmanager
def whole(path, mode="w", **kw):
    """path opened for writing under a name of its own (host, process, write), renamed to path
    when closed: a reader never meets half of it, and two workers writing the same file (an
    assembler woken past its lease beside the one that took over) never truncate each other's,
    nor, once the output is committed, write into it (they hold no descriptor of its files)."""
    part = f"{path}.{socket.gethostname()}.{os.getpid()}.{next(_WRITES)}.part"
    try:
        with open(part, mode, **kw) as f:
            yield f
        os.replace(part, path)
    finally:
        if os.path.exists(part):  # an error midway: nothing half written stays
            os.remove(part)


def write_json(path, obj, indent=1):
    """obj as JSON in path, written under another name and renamed: never half a file."""
    with whole(path, encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False, sort_keys=True)


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


def commit_dir(tmp, final, done="", replace=True):
    """Complete a folder written in tmp: its files on disk (so a power cut cannot reorder them),
    then DONE (holding done: a dict is written as JSON, such as a stage's {"stage": name}), then
    tmp renamed to final. An older final is renamed away first and removed after, so no crash
    leaves a complete-looking folder without its files; replace=False: FileExistsError where
    final is there (a task that another worker committed first)."""
    for d, _, files in os.walk(tmp):
        for name in files:
            with open(os.path.join(d, name), "rb+") as f:
                os.fsync(f.fileno())
    with open(os.path.join(tmp, DONE), "w") as f:
        f.write(done if isinstance(done, str) else json.dumps(done))
        os.fsync(f.fileno())
    final = final.rstrip(os.sep)
    if not replace:
        try:  # a rename onto a folder that holds files fails, whoever made it
            os.rename(tmp, final)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(final) from None
            raise
        return final
    old = os.path.join(os.path.dirname(final), ".del_" + os.path.basename(final))
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def is_done(path):
    return os.path.exists(os.path.join(path, DONE))


def remove_if_there(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


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
