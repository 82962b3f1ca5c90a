"""
Benchmark questions out of the training data: a document that holds a copy of a task item (its
question, context, choices and answer; few-shot files too), even a lightly edited one, is
dropped before tokenize, and the same rule tells which items a training corpus holds.

    grams(text)                      the n-gram hashes of a text (and where each starts): what
                                     both sides compare
    build_index(tasks_dir, folder)   every item of every .jsonl file under tasks_dir: its
                                     n-grams, sorted, with the item of each
    decontaminate_corpus(src, out, tasks_dir)
                                     the stage over shards: documents that hold an item go to
                                     removed/, with the item and the first n-gram it matched
    found_in(docs_dir, tasks_dir)    the items some document holds, by task file (eval.py
                                     --contamination scores the others apart)

Normalisation, the same on both sides: dedup.norm_for_dedup (NFKC, so full-width forms become
half-width; lower case; punctuation and symbols gone; whitespace runs one space), then tokens:
each CJK character alone, any other run of letters and digits a word. A token of one latin
letter or digit is dropped, so labels ("A. ", "(b)", "1.") and an answer list rewritten with
them change nothing. An item is a candidate when a document shares one of its n-grams (N_WORDS
tokens from a word, N_CJK from a CJK character); the document holds it when one window of it
holds, in order, COVER of the item's tokens, or FIELDS of the tokens of the two or more fields
it touches (a question and its choices copied without the answer; a HumanEval prompt and
solution without the tests). A classic that an item quotes holds the quotation, not the rest of
the item. docs/data.md has the planted-set measurement behind the values
(benchmarks/decont_bench.py). Nothing here imports torch.
"""
import difflib, json, os, tempfile, time

import numpy as np

from dedup import _is_cjk, norm_for_dedup
from executor import Stage
from kept import DocWriter, count, finish_documents
from stage import (DataError, Progress, already_done, iter_documents, read_json, report_problems,
                   sha256_file, splitmix64, write_json)

N_WORDS, N_CJK, COVER, FIELDS = 5, 5, 0.5, 0.8

_B, _C = np.uint64(0x100000001B3), np.uint64(0x9E3779B97F4A7C15)  # odd: invertible mod 2^64
_C_INV = np.uint64(pow(int(_C), -1, 2**64))


def _powers(base, n):
    """base^0 .. base^(n-1) in wrapping uint64."""
    p = np.full(max(n, 1), base, np.uint64)
    p[0] = 1
    return np.cumprod(p, dtype=np.uint64)[:n]


def tokens(normed):
    """(hash, is CJK, start, end) of each token of a normalised text, as arrays: CJK characters
    alone, other runs between spaces whole; tokens of one latin letter or digit left out."""
    c = np.frombuffer(normed.encode("utf-32-le"), np.uint32).astype(np.uint64)
    cjk, word = _is_cjk(c), c != 32
    start = word.copy()
    start[1:] &= ~word[:-1] | cjk[1:] | cjk[:-1]
    first = np.flatnonzero(start)
    if len(first) == 0:
        return np.zeros(0, np.uint64), np.zeros(0, bool), first, first
    n = np.add.reduceat(word.astype(np.int64), first)  # a token's characters come first
    # a polynomial hash of each token's characters, all at once (spaces count nothing)
    pos = np.arange(len(c)) - first[np.maximum(np.cumsum(start) - 1, 0)]
    h = np.add.reduceat(c * _powers(_B, len(c))[pos] * word, first, dtype=np.uint64)
    keep = ~((n == 1) & (c[first] < 128))
    return (splitmix64(h ^ n.astype(np.uint64))[keep], cjk[first][keep], first[keep],
            (first + n)[keep])


def grams(text, n_words=N_WORDS, n_cjk=N_CJK, normed=None):
    """(hashes, first token, last token) of the n-grams of text: n_cjk tokens from a CJK
    character, n_words from any other; and the normalised text's tokens (tokens())."""
    normed = norm_for_dedup(text) if normed is None else normed
    tok = tokens(normed)
    t, cjk = tok[0], tok[1]
    m = len(t)
    size = np.where(cjk, n_cjk, n_words)
    s = np.flatnonzero(np.arange(m) + size <= m)
    e = s + size[s] - 1
    # sum of t[j] C^(e - j) over j in [s, e]: prefix sums of t C^-j, times C^e
    g = np.cumsum(t * _powers(_C_INV, m), dtype=np.uint64)
    below = np.where(s > 0, g[np.maximum(s - 1, 0)], np.uint64(0))
    h = (g[e] - below) * _powers(_C, m)[e] if m else np.zeros(0, np.uint64)
    return splitmix64(h ^ size[s].astype(np.uint64)), s, e, tok


# -----------------------------------------------------------------------------
# the index of the task items

def leaves(obj):
    """The strings of a task item (a JSON value), in order: its fields, whatever they are called."""
    if isinstance(obj, str):
        return [obj] if obj else []
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    return [t for v in values for t in leaves(v)]


def item_text(obj):
    """Every string in a task item, one a line: questions, passages, choices, answers."""
    return "\n".join(leaves(obj))


def task_files(tasks_dir):
    """The .jsonl files under tasks_dir (relative paths, sorted): each line one item."""
    out = []
    for d, dirs, files in os.walk(tasks_dir):
        dirs.sort()
        out += [os.path.relpath(os.path.join(d, f), tasks_dir) for f in sorted(files)
                if f.endswith(".jsonl")]
    if not out:
        raise DataError(f"{tasks_dir}: no task files (.jsonl, one item a line) found")
    return out


def build_index(tasks_dir, folder, n_words=N_WORDS, n_cjk=N_CJK):
    """folder/index.npy: the n-gram hashes of every item, sorted; index.items.npy: the item of
    each (its place in items.json: [file, line]); tokens.npy, fields.npy and offsets.npy: each
    item's tokens (hashes) and the field of each, what a match is checked against; tasks.json:
    per file, its items and those too short to hold an n-gram (never found, counted as such)."""
    hashes, owner, toks, fields, items, per_file = [], [], [], [], [], {}
    for rel in task_files(tasks_dir):
        stats = per_file.setdefault(rel, dict(items=0, too_short=0))
        with open(os.path.join(tasks_dir, rel), encoding="utf-8", newline="") as f:
            for line, raw in enumerate(f.read().split("\n"), 1):  # as tasks.read_task counts
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except ValueError as e:
                    raise DataError(f"{tasks_dir}/{rel}, line {line}: not JSON ({e})") from None
                h = np.unique(grams(item_text(obj), n_words, n_cjk)[0])
                stats["items"] += 1
                stats["too_short"] += len(h) == 0
                hashes.append(h)
                owner.append(np.full(len(h), len(items), np.uint32))
                parts = [tokens(norm_for_dedup(t))[0] for t in leaves(obj)]
                toks.append(np.concatenate(parts + [np.zeros(0, np.uint64)]))
                fields.append(np.repeat(np.arange(len(parts), dtype=np.uint32),
                                        list(map(len, parts))))
                items.append([rel, line])
    h = np.concatenate(hashes + [np.zeros(0, np.uint64)])
    order = np.argsort(h, kind="stable")
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "index.npy"), h[order])
    np.save(os.path.join(folder, "index.items.npy"),
            np.concatenate(owner + [np.zeros(0, np.uint32)])[order])
    np.save(os.path.join(folder, "tokens.npy"), np.concatenate(toks + [np.zeros(0, np.uint64)]))
    np.save(os.path.join(folder, "fields.npy"), np.concatenate(fields + [np.zeros(0, np.uint32)]))
    np.save(os.path.join(folder, "offsets.npy"), np.cumsum([0] + list(map(len, toks))))
    write_json(os.path.join(folder, "items.json"), items, indent=None)
    write_json(os.path.join(folder, "tasks.json"), per_file)
    return per_file


class Index:
    """An index that build_index wrote (memory-mapped: workers share its pages)."""

    def __init__(self, folder):
        load = lambda name: np.load(os.path.join(folder, name), mmap_mode="r")
        self.h, self.owner = load("index.npy"), load("index.items.npy")
        self.tokens, self.fields = load("tokens.npy"), load("fields.npy")
        self.offsets = load("offsets.npy")  # item o's tokens: tokens[offsets[o]:offsets[o + 1]]
        self.items = read_json(os.path.join(folder, "items.json"))

    def rows(self, h):
        """The index rows that hold each hash of h: (first, past the last) of each."""
        return np.searchsorted(self.h, h), np.searchsorted(self.h, h, side="right")

    def candidates(self, h, starts):
        """{item: the token positions where the n-grams h (starting at starts) that it holds
        start}: the items that share an n-gram with a text."""
        a, b = self.rows(h)
        hits = {}
        for k in np.flatnonzero(b > a):
            for o in self.owner[a[k]:b[k]].tolist():
                hits.setdefault(o, []).append(int(starts[k]))
        return hits

    def cover(self, o, doc, hits):
        """How much of item o the document's tokens doc (hashes, an array) hold, in order, in one
        window of three item lengths around its densest hits: the share of the item's tokens in
        matching runs of two or more, the share of the tokens of the fields those runs touch,
        and how many fields they touch."""
        item = self.tokens[self.offsets[o]:self.offsets[o + 1]]
        n, pos = len(item), np.sort(hits)
        best = pos[np.argmax(np.searchsorted(pos, pos + n) - np.arange(len(pos)))]
        window = doc[max(best - n, 0):best + 2 * n].tolist()
        held = np.zeros(n, bool)
        for i, _, size in difflib.SequenceMatcher(None, item.tolist(), window, autojunk=False) \
                .get_matching_blocks():
            if size >= 2:  # one CJK character in common is chance
                held[i:i + size] = True
        field = self.fields[self.offsets[o]:self.offsets[o + 1]]
        fields = np.unique(field[held])
        touched = np.isin(field, fields)
        return held.mean(), held[touched].mean() if touched.any() else 0.0, len(fields)

    def found(self, text, n_words=N_WORDS, n_cjk=N_CJK, cover=COVER, fields=FIELDS):
        """The items that text holds, [(file, line)] sorted: an item shares an n-gram with it, and
        one window of it holds cover of the item's tokens in order, or fields of the tokens of
        the two or more fields it touches (a question copied without its answer or its tests).
        Also the first of them to match in text, and its first n-gram there (normalised): the
        evidence removed/ gives. ([], None, None) for a clean text."""
        normed = norm_for_dedup(text)
        h, s, e, tok = grams(text, n_words, n_cjk, normed)
        hits = self.candidates(h, s)
        if not hits:
            return [], None, None
        found = set()
        for o, pos in hits.items():
            c, f, touched = self.cover(o, tok[0], pos)
            if c >= cover or (touched >= 2 and f >= fields):
                found.add(o)
        if not found:
            return [], None, None
        # the evidence: the first n-gram of text that a found item holds (hits are in text order)
        start, o = min((hits[o][0], o) for o in found)
        k = int(np.searchsorted(s, start))  # one n-gram starts at each token
        return (sorted(tuple(self.items[o]) for o in found), tuple(self.items[o]),
                normed[tok[2][s[k]]:tok[3][e[k]]])


def found_in(docs_dir, tasks_dir, n_words=N_WORDS, n_cjk=N_CJK, cover=COVER, fields=FIELDS):
    """{task file: [lines]} of the items of tasks_dir that the documents under docs_dir hold
    (Index.found; eval.py --contamination): the documents streamed, one at a time, against an
    index built in a temporary folder; memory in the items, not the documents."""
    out, problems, seen = {}, [], 0
    with tempfile.TemporaryDirectory() as tmp:
        build_index(tasks_dir, tmp, n_words, n_cjk)
        index = Index(tmp)
        for doc in Progress("contamination", iter_documents(docs_dir, problems), " documents"):
            seen += 1
            for file, line in index.found(doc["text"], n_words, n_cjk, cover, fields)[0]:
                out.setdefault(file, set()).add(line)
    report_problems(problems, docs_dir)
    if not seen:  # an empty folder is no evidence that every item is clean
        raise DataError(f"{docs_dir}: no documents found (looked for .jsonl, .jsonl.gz and .txt "
                        "files): --contamination names the documents a run trained on")
    return {file: sorted(lines) for file, lines in sorted(out.items())}


# -----------------------------------------------------------------------------
# the stage over shards

def _decont_task(st, i, out, params, shard_bytes):
    index = Index(os.path.join(st.tmp, "index"))
    problems, report, found = [], {}, {}
    with DocWriter(out, "docs", shard_bytes) as kept, \
         DocWriter(out, "removed", shard_bytes) as removed:
        for doc in st.documents(i, problems):
            size, (items, first, gram) = len(doc["text"].encode()), index.found(doc["text"],
                                                                                **params)
            if items:  # named by its first n-gram's item; every item it holds counts as found
                removed.write(dict(id=doc["id"], source=doc["source"], reason="contaminated",
                                   task=first[0], line=first[1], ngram=gram))
                count(report, doc["source"], size, "contaminated")
                for file in {f for f, _ in items}:
                    found.setdefault(file, dict(documents=0, lines=set()))["documents"] += 1
                for file, line in items:
                    found[file]["lines"].add(line)
            else:
                kept.write(doc)
                count(report, doc["source"], size, size_out=size)
    write_json(os.path.join(out, "report.json"), dict(docs=kept.files, removed=removed.files,
                                                      sources=report, problems=problems,
                                                      tasks={k: dict(v, lines=sorted(v["lines"]))
                                                             for k, v in found.items()}))


def _digest(tasks_dir):
    return [[rel, sha256_file(os.path.join(tasks_dir, rel))] for rel in task_files(tasks_dir)]


def decontaminate_corpus(src, out_dir, tasks_dir, n_words=N_WORDS, n_cjk=N_CJK, cover=COVER,
                         fields=FIELDS, shard_mb=16, workers=0, rank=0, world=1):
    """The documents of src less those that hold an item of the task files
    under tasks_dir; removed/ names the task file, the item's line and the n-gram (normalised),
    report.json counts them per source and per task file (documents removed, items found).
    The index it used stays in out_dir/index/."""
    if not already_done(out_dir, "decontaminate"):
        params = dict(n_words=n_words, n_cjk=n_cjk, cover=cover, fields=fields)
        settings = dict(params, tasks=_digest(tasks_dir))  # other task files: another result
        with Stage("decontaminate", src, out_dir, settings, shard_mb * 2**20, workers, rank,
                   world, setup=lambda tmp: build_index(tasks_dir, os.path.join(tmp, "index"),
                                                        n_words, n_cjk),
                   documents=True) as st:
            t0 = time.time()
            st.run("decontaminate", len(st.tasks), _decont_task, params, int(shard_mb * 2**20))

            def finish(tmp):
                tasks = read_json(os.path.join(tmp, "index", "tasks.json"))
                for t in tasks.values():
                    t.update(documents_removed=0, items_found=[])
                for i in range(len(st.tasks)):
                    part = read_json(os.path.join(st.path("decontaminate", i), "report.json"))
                    for file, f in part["tasks"].items():
                        tasks[file]["documents_removed"] += f["documents"]
                        tasks[file]["items_found"] = sorted(set(tasks[file]["items_found"])
                                                            | set(f["lines"]))
                finish_documents(st, tmp, "decontaminate", dict(params=params, tasks=tasks),
                                 time.time() - t0)
                for file, t in tasks.items():
                    if t["documents_removed"]:
                        print(f"{file}: {len(t['items_found'])} of {t['items']} items found in "
                              f"{t['documents_removed']} documents")
            st.finish(finish)
    return read_json(os.path.join(out_dir, "report.json"))
