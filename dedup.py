"""
Dedup as MAP-Neo's "Matrix" recipe does it: exact documents, then MinHash-LSH near-duplicates
(character n-grams, 128 permutations, 9 bands x 13 rows, connected components), then exact
paragraphs repeated from an earlier kept document. The first occurrence wins, in the input's
order.

    dedup_texts(texts)        the whole recipe on a list of texts in memory: the reference
                              the stage is tested against (tests/test_pipeline.py)
    dedup_corpus(src, out)    the same steps over shards of any size: `python curate.py dedup`

The stage (datatrove's MinHash pipeline, plus the exact and paragraph steps) runs in phases,
each a set of independent tasks, every one called as fn(stage, i, folder, *args): task i of the
phase, the folder it writes whole, and its arguments (the DEDUP parameters, the number of
partitions, ...):

    signatures  per input task: each document's exact key, signature and band hashes, written
                sorted by partition; its paragraph keys, by document
    copies      per partition of the exact keys: exact copies (same key)
    buckets     per partition of each band's hashes: LSH candidates (same band hash) that are
                not copies and whose signatures agree, as edges partitioned by document
    large0, small0, large1, ...
                per partition of the documents: the connected components of the edges, by
                Kiveris et al.'s large-star and small-star steps, until every component is a star
                around its first document
    clusters    per partition of the documents: the near-duplicates and clusters in it
    keys        per input task: the paragraph keys of its documents that are kept, by partition
    paragraphs  per partition: long paragraphs already in an earlier kept document
    filter      per input task: its documents again, minus what the decisions removed

A document is known by its place packed in a uint64, task << 32 | index in its task: the fixed
global order in which the first occurrence wins, whatever the number of workers. A partition
task holds at most about PART_RECORDS records at a time (a larger partition is read in ranges of
its first column), a filter task one task's decisions: memory per worker does not grow with the
corpus (a component's star is read whole: the largest cluster, not the corpus, bounds it).
Nothing here imports torch.
"""
import contextlib, functools, hashlib, itertools, json, os, re, shutil, time, unicodedata
from itertools import repeat

import numpy as np

from kept import DocWriter, count, finish_documents
from executor import Stage
from stage import already_done, input_files, read_json, splitmix64, whole, write_json

_NON_WORD = re.compile(r"[\W_]+")  # \w is every unicode letter and digit, CJK included


def norm_for_dedup(text):
    """NFKC, lower case, punctuation and symbols gone, whitespace runs -> one space."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def _key128(normed):
    return np.frombuffer(hashlib.blake2b(normed.encode(), digest_size=16).digest(), "<u8")


# -----------------------------------------------------------------------------
# minhash
#
# shingle size: an edit destroys every shingle that overlaps it, so small n keeps edited copies
# similar; but small n also makes unrelated text similar, as a long document comes to hold most
# of its language's common n-grams. n is one word in either script: 5 characters of english (a
# word is ~4.7 letters and a space), 2 of chinese (a word is ~1.5 characters); docs/data.md has
# the measurements behind it. The size is chosen per position, not per document: a shingle that
# starts on a CJK character (kana included; Hangul has spaces, so it counts as english), or on
# the space before one (punctuation, once normalised), is 2 characters long, any other 5. So
# Chinese technical prose full of commands and identifiers gets word-sized shingles in both of
# its scripts, and all-Chinese and all-English text get what they would get alone.

def _is_cjk(c):
    return (((c >= 0x2E80) & (c <= 0x9FFF)) | ((c >= 0xF900) & (c <= 0xFAFF))
            | ((c >= 0x20000) & (c <= 0x3FFFF)))


def _window_hashes(c, n, m):
    # polynomial hash of each of the first m windows of n characters, all windows at once
    h = np.zeros(max(m, 0), dtype=np.uint64)
    for j in range(n if m > 0 else 0):
        h = h * np.uint64(0x100000001B3) + c[j:j + m]
    return h


def shingles(text, ngram=5, ngram_cjk=2, normed=False):
    """Sorted unique 32-bit hashes of the character n-grams of norm_for_dedup(text) (text itself
    when normed): ngram_cjk characters from a CJK character, ngram from any other."""
    c = np.frombuffer((text if normed else norm_for_dedup(text)).encode("utf-32-le"),
                      np.uint32).astype(np.uint64)
    cjk = _is_cjk(c)
    # a space before a CJK character (punctuation, once normalised) starts a CJK window too
    if cjk.any():
        cjk[:-1] |= (c[:-1] == 32) & cjk[1:]
    h = _window_hashes(c, ngram, len(c) - ngram + 1)
    if cjk.any():  # a window that starts on a CJK character is ngram_cjk long
        h = np.concatenate(
            [h[~cjk[:len(h)]],
             _window_hashes(c, ngram_cjk, len(c) - ngram_cjk + 1)[cjk[:len(c) - ngram_cjk + 1]]])
    if len(h) == 0:  # shorter than a window: one shingle, the whole text
        h = _window_hashes(c, len(c), 1)
    x = np.sort((splitmix64(h) >> np.uint64(32)).astype(np.uint32))
    return x[np.concatenate(([True], x[1:] != x[:-1]))]  # np.unique, minus its per-call overhead


@functools.lru_cache(maxsize=8)
def _perm_params(num_perm, seed):
    # a_i, b_i from splitmix64 rather than np.random: Generator streams may change between numpy
    # versions, and signatures must match across runs and machines
    i = np.arange(2 * num_perm, dtype=np.uint64) + np.uint64(seed) * np.uint64(2 * num_perm)
    ab = splitmix64(splitmix64(i) ^ np.uint64(0x5DEECE66D))
    return ab[:num_perm, None], ab[num_perm:, None]


def minhash(text, ngram=5, ngram_cjk=2, num_perm=128, seed=0, normed=False):
    """MinHash signature, uint32 (num_perm,), a pure function of (text, parameters).
    Permutation i is h_i(x) = ((a_i x + b_i) mod 2^64) >> 32 on 32-bit shingle hashes x:
    Dietzfelbinger's multiply-add-shift, strongly universal like (a x + b) mod p, but with no
    modulo and no overflow to guard. The shift is monotone, so only the minimum is shifted."""
    x = shingles(text, ngram, ngram_cjk, normed).astype(np.uint64)
    a, b = _perm_params(num_perm, seed)
    sig = np.full(num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
    for i in range(0, len(x), 4096):  # blocks keep the (num_perm, block) matrix in cache
        h = a * x[None, i:i + 4096]
        h += b
        np.minimum(sig, h.min(axis=1), out=sig)
    return (sig >> np.uint64(32)).astype(np.uint32)


# -----------------------------------------------------------------------------
# locality-sensitive hashing
#
# two documents become candidates when all r rows of at least one of b bands agree. a row agrees
# with probability s (their Jaccard similarity), so P(candidate) = 1 - (1 - s^r)^b, an s-curve
# whose steepest point is near (1/b)^(1/r). with MAP-Neo's b=9, r=13 (117 of the 128
# permutations; the other 11 are unused) that threshold is (1/9)^(1/13) = 0.845:
#     s       0.5     0.6     0.7    0.8    0.85   0.9    0.95
#     P    0.0011   0.012   0.084   0.40   0.69   0.93   0.998
# the shingle size sets which edits keep s above it (see minhash above). A band is one 64-bit
# hash of its r rows (a collision only adds a candidate, which agreeing() then judges).

def band_hashes(signatures, bands=9, rows=13):
    """(n, bands) uint64: a hash of each band of rows of each signature."""
    assert bands * rows <= signatures.shape[1], "bands * rows must fit in num_perm"
    s = signatures[:, :bands * rows].astype(np.uint64).reshape(len(signatures), bands, rows)
    h = np.full(s.shape[:2], 0x9E3779B97F4A7C15, np.uint64)
    for r in range(rows):
        h = splitmix64(h ^ s[:, :, r])
    return h


def _groups(keys, docs):
    # rows sorted by (keys, doc): the order, and which rows open a run of equal keys
    order = np.lexsort((docs, *keys.T[::-1]))
    k = keys[order]
    new = np.ones(len(order), bool)
    new[1:] = (k[1:] != k[:-1]).any(axis=1)
    return order, new


def first_pairs(keys, docs):
    """(first, doc) for every doc that shares its key with an earlier one: first is the smallest
    doc of that key. keys: (n, k) uint64 rows; docs: (n,) uint64, any order."""
    order, new = _groups(keys, docs)
    d = docs[order]
    first = d[np.flatnonzero(new)[np.cumsum(new) - 1]]
    return np.stack([first[~new], d[~new]], axis=1)


def roots(pairs):
    """(nodes, root of each): the nodes of the graph of pairs (sorted) and the smallest node of
    each one's connected component. Min-label propagation with pointer jumping, in numpy:
    memory in the number of pairs, not of documents."""
    nodes, inv = np.unique(np.asarray(pairs, np.uint64).reshape(-1, 2), return_inverse=True)
    u, v = inv.reshape(-1, 2).T
    label = np.arange(len(nodes))
    while True:
        new = label.copy()
        low = np.minimum(label[u], label[v])
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        new = new[new]
        if (new == label).all():
            return nodes, nodes[label]
        label = new


def agreeing(pairs, sig_of, min_agree):
    """The pairs whose signatures agree on at least min_agree of their permutations (an estimate
    of their Jaccard similarity, standard error <= 0.045 at 128 permutations). Banding alone
    lets 8% of pairs at s=0.7 and 0.1% at s=0.5 through, and one such edge can chain two
    clusters."""
    if min_agree <= 0 or len(pairs) == 0:
        return pairs
    return pairs[(sig_of(pairs[:, 0]) == sig_of(pairs[:, 1])).mean(axis=1) >= min_agree]


# -----------------------------------------------------------------------------
# the dedup steps, each on arrays of one partition of the corpus, and dedup_texts() on a list

DEDUP = dict(ngram=5, ngram_cjk=2, num_perm=128, bands=9, rows=13, seed=0, min_agree=0.7,
             min_para=50)


def paragraphs(text, min_para):
    """The paragraphs of text (split at blank lines) and a 128-bit key of each normalised one of
    at least min_para characters (None for shorter ones, which are never removed)."""
    paras = text.split("\n\n")
    normed = [norm_for_dedup(t) for t in paras]
    return paras, [_key128(t) if len(t) >= min_para else None for t in normed]


def features(text, p=DEDUP):
    """What dedup needs of one document: its exact key (2 uint64), its MinHash signature and
    the distinct keys of its long paragraphs ((k, 2) uint64)."""
    normed = norm_for_dedup(text)
    keys = {tuple(k) for k in paragraphs(text, p["min_para"])[1] if k is not None}
    return (_key128(normed),
            minhash(normed, p["ngram"], p["ngram_cjk"], p["num_perm"], p["seed"], normed=True),
            np.array(sorted(keys), np.uint64).reshape(-1, 2))


def paragraph_drops(records):
    """(doc, key_hi, key_lo) of each long paragraph already in an earlier document, sorted.
    records: (doc, key_hi, key_lo), the distinct paragraph keys of each kept document (exact
    and near duplicates own nothing; a document later dropped for its paragraphs still owns
    those it had first)."""
    order, new = _groups(records[:, 1:], records[:, 0])
    drops = records[order][~new]  # every record of a key but the first (smallest) document's
    return drops[np.lexsort((drops[:, 2], drops[:, 1], drops[:, 0]))]


def without_paragraphs(text, drops, min_para):
    """text without its paragraphs whose keys are in drops (a set of (hi, lo)); None when less
    than min_para normalised characters would be left."""
    if not drops:
        return text
    paras, keys = paragraphs(text, min_para)
    kept = [t for t, k in zip(paras, keys) if k is None or tuple(k.tolist()) not in drops]
    if len(kept) == len(paras):
        return text
    text = "\n\n".join(kept)
    return None if len(norm_for_dedup(text)) < min_para else text


def dedup_texts(docs, workers=1, **params):
    """Exact, near-duplicate and paragraph dedup of a list of texts, in memory; the first copy
    is kept. Parameters (DEDUP): shingle sizes, num_perm, bands x rows, seed; min_agree: a
    candidate pair is joined only if its signatures agree on >= min_agree of the permutations
    (0 turns it off); min_para: paragraphs shorter than this (normalised characters) are never
    removed, so lines like "CHAPTER I" survive; a document left with less than that is
    dropped. Returns dict(keep=[kept indices], texts={index: new text where paragraphs went},
    removed=[(index, "exact" | "near" | "paragraphs", kept index or None)],
    clusters=[[indices] of every near-duplicate cluster of size > 1]). workers > 1: the
    features in that many processes (the same numbers)."""
    p = {**DEDUP, **params}
    if workers > 1 and len(docs) > 64:
        from multiprocessing import get_context
        with get_context("spawn").Pool(workers) as pool:
            feats = pool.starmap(features, zip(docs, repeat(p)), chunksize=32)
    else:
        feats = [features(t, p) for t in docs]
    n, ids = len(docs), np.arange(len(docs), dtype=np.uint64)
    keys = np.array([f[0] for f in feats], np.uint64).reshape(n, 2)
    sigs = np.array([f[1] for f in feats], np.uint32).reshape(n, p["num_perm"])
    exact = first_pairs(keys, ids)  # (kept, copy)
    h = band_hashes(sigs, p["bands"], p["rows"])
    cand = np.unique(np.concatenate([first_pairs(h[:, [b]], ids) for b in range(p["bands"])]),
                     axis=0)
    nodes, root = roots(agreeing(cand, lambda d: sigs[d.astype(np.int64)], p["min_agree"]))
    copies = np.sort(exact[:, 1])
    live = ~_isin(nodes, copies)  # exact copies sit in their original's cluster: left out
    nodes, root = nodes[live], root[live]
    near = nodes != root
    records = np.concatenate([np.c_[np.full(len(f[2]), i, np.uint64), f[2]]
                              for i, f in enumerate(feats)] + [np.zeros((0, 3), np.uint64)])
    gone = np.sort(np.concatenate([copies, nodes[near]]))
    drops = paragraph_drops(records[~_isin(records[:, 0], gone)])
    removed = [(int(c), "exact", int(k)) for k, c in exact.tolist()] + \
              [(int(d), "near", int(r)) for d, r in zip(nodes[near].tolist(), root[near].tolist())]
    gone, keep, texts = {i for i, _, _ in removed}, [], {}
    per_doc = {}
    for d, hi, lo in drops.tolist():
        per_doc.setdefault(d, set()).add((hi, lo))
    for i in range(n):
        if i in gone:
            continue
        text = without_paragraphs(docs[i], per_doc.get(i), p["min_para"])
        if text is None:
            removed.append((i, "paragraphs", None))
            continue
        keep.append(i)
        if text is not docs[i]:
            texts[i] = text
    clusters = {}
    for d, r in zip(nodes.tolist(), root.tolist()):
        clusters.setdefault(r, []).append(d)
    return dict(keep=keep, texts=texts, removed=sorted(removed),
                clusters=[sorted(c) for _, c in sorted(clusters.items()) if len(c) > 1])


def _isin(x, sorted_arr):
    """x in sorted_arr, elementwise (sorted_arr may be a memmap: binary search, no copy)."""
    if len(sorted_arr) == 0:
        return np.zeros(len(x), bool)
    i = np.searchsorted(sorted_arr, x)
    return sorted_arr[np.minimum(i, len(sorted_arr) - 1)] == x


# -----------------------------------------------------------------------------
# the stage over shards (the phases: see the top of this file)

PART_BYTES = 1 << 30  # input bytes per partition (for parallelism; at most MAX_PARTS of them)
MAX_PARTS = 4096      # a partition task reads from every input task once per range, so more of
                      # them keeps the longest task short (docs/data.md, the scale table); each
                      # filter task reads every partition's decisions about its documents
PART_RECORDS = 1 << 21  # records a task holds at once: 160-260 MB with their sorting (measured)


def _save_parts(out, name, records, part, n):
    # records sorted by partition, then by their columns; name.idx.npy: where each partition starts
    order = np.lexsort((*records.T[::-1], part))
    np.save(os.path.join(out, name + ".npy"), records[order])
    np.save(os.path.join(out, name + ".idx.npy"), np.searchsorted(part[order], np.arange(n + 1)))


def _files(st, phase, tasks, prefix):
    """The arrays prefix*.npy (not their .idx.npy) that tasks of phase wrote, in order."""
    for k in tasks:
        folder = st.path(phase, k)
        for f in sorted(os.listdir(folder)):
            if f.startswith(prefix) and f.endswith(".npy") and not f.endswith(".idx.npy"):
                yield os.path.join(folder, f)


def _each(st, phase, tasks, prefix):
    """The arrays of _files, one at a time (memory-mapped)."""
    for path in _files(st, phase, tasks, prefix):
        yield np.load(path, mmap_mode="r")


def _ranges(paths, p, width):
    """The records of partition p in the files paths (each written by _save_parts), about
    PART_RECORDS at a time: the partition cut into ranges of its first column (a run of equal
    values is never cut), each range read from every file by binary search, one file open at a
    time. The cuts are quantiles of the first column, from evenly spaced samples of each file
    (sorted): the ranges hold about as many records whatever the values are (hashes, or
    documents' places), and the samples take memory in files and ranges, not records."""
    spans = []
    for path in paths:
        a, b = np.load(path[:-4] + ".idx.npy")[[p, p + 1]].tolist()
        if b > a:
            spans.append((path, a, b))
    total = sum(b - a for _, a, b in spans)
    ranges, edges = max(1, -(-total // PART_RECORDS)), np.zeros(0, np.uint64)
    if ranges > 1:  # samples in proportion to each file's share, 16 a range in all (and 2 a
        s = [2 + 16 * ranges * (b - a) // total for _, a, b in spans]  # file): memory in files
        values = np.concatenate([np.load(path, mmap_mode="r")[a + np.arange(k) * (b - a) // k, 0]
                                 for (path, a, b), k in zip(spans, s)])
        weight = np.concatenate([np.full(k, (b - a) / k) for (_, a, b), k in zip(spans, s)])
        order = np.argsort(values, kind="stable")
        at = np.searchsorted(np.cumsum(weight[order]), total * np.arange(1, ranges) / ranges)
        edges = np.unique(values[order][np.minimum(at, len(order) - 1)])
    cuts = [[a, *(a + np.searchsorted(np.load(path, mmap_mode="r")[a:b, 0], edges)), b]
            if len(edges) else [a, b] for path, a, b in spans]  # (one range: no file opened)
    for k in range(len(edges) + 1):
        parts = [np.array(np.load(path, mmap_mode="r")[c[k]:c[k + 1]])
                 for (path, _, _), c in zip(spans, cuts) if c[k + 1] > c[k]]
        yield np.concatenate(parts) if parts else np.zeros((0, width), np.uint64)


def _signature_task(st, i, out, p, n_part):
    feats, names = [], []
    for doc in st.documents(i, []):  # (the filter phase reports the problems)
        feats.append(features(doc["text"], p))
        names.append(json.dumps([doc["id"], doc["text"][:80]], ensure_ascii=False) + "\n")
    n, doc = len(feats), (np.uint64(i) << np.uint64(32)) + np.arange(len(feats), dtype=np.uint64)
    keys = np.array([f[0] for f in feats], np.uint64).reshape(n, 2)
    sigs = np.array([f[1] for f in feats], np.uint32).reshape(n, p["num_perm"])
    np.save(os.path.join(out, "sigs.npy"), sigs)
    _save_parts(out, "exact", np.c_[keys, doc], keys[:, 0] % np.uint64(n_part), n_part)
    h = band_hashes(sigs, p["bands"], p["rows"])  # (n, bands)
    band = np.repeat(np.arange(p["bands"], dtype=np.uint64)[None], n, axis=0)
    _save_parts(out, "bands", np.c_[h.ravel(), np.repeat(doc, p["bands"])],
                (band * np.uint64(n_part) + h % np.uint64(n_part)).ravel(), p["bands"] * n_part)
    np.save(os.path.join(out, "paras.npy"), np.concatenate(  # (doc, key_hi, key_lo), sorted by doc
        [np.c_[np.full(len(f[2]), d, np.uint64), f[2]] for d, f in zip(doc, feats)]
        + [np.zeros((0, 3), np.uint64)]))
    with open(os.path.join(out, "names.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(names)
    np.save(os.path.join(out, "names.idx.npy"), np.cumsum([0] + [len(x.encode()) for x in names]))


class _Lookup:
    """Signatures and (id, start of text) of any document, by its place, from the signatures phase
    (files opened as needed, a few indexes kept: never one open file per task of the corpus)."""

    def __init__(self, st):
        self.st = st

    def sig(self, docs):
        task, j = ((docs >> np.uint64(32)).astype(np.int64),
                   (docs & np.uint64(0xFFFFFFFF)).astype(np.int64))
        out = None
        for t in np.unique(task).tolist():
            sigs = np.load(os.path.join(self.st.path("signatures", t), "sigs.npy"), mmap_mode="r")
            out = np.empty((len(docs), sigs.shape[1]), np.uint32) if out is None else out
            out[task == t] = sigs[j[task == t]]
            del sigs
        return out

    def name(self, doc):
        folder = self.st.path("signatures", int(doc) >> 32)
        with open(os.path.join(folder, "names.jsonl"), "rb") as f:
            f.seek(int(_names_index(folder)[int(doc) & 0xFFFFFFFF]))
            return json.loads(f.readline())  # [id, start of text]


@functools.lru_cache(maxsize=64)
def _names_index(folder):
    return np.load(os.path.join(folder, "names.idx.npy"))


def _copies_task(st, k, out, p, n_part):
    paths = list(_files(st, "signatures", range(len(st.tasks)), "exact"))
    for r, rec in enumerate(_ranges(paths, k, 3)):  # (copy, original), sorted by copy
        copies = first_pairs(rec[:, :2], rec[:, 2])[:, ::-1]
        np.save(os.path.join(out, f"copies_{r:05d}.npy"), copies[np.argsort(copies[:, 0])])


def _bucket_task(st, k, out, p, n_part):
    # LSH candidates among the documents that are not exact copies (a copy has its original's
    # signature, so it sits in its original's buckets and joins nothing the original does not),
    # those that agree kept, a block at a time (its signatures in memory), as edges both ways
    paths, lookup = list(_files(st, "signatures", range(len(st.tasks)), "bands")), _Lookup(st)
    for r, rec in enumerate(_ranges(paths, k, 2)):
        for c in _each(st, "copies", range(n_part), "copies"):
            rec = rec[~_isin(rec[:, 1], c[:, 0])]
        pairs = first_pairs(rec[:, :1], rec[:, 1])
        pairs = np.concatenate([agreeing(pairs[a:a + 8192], lookup.sig, p["min_agree"])
                                for a in range(0, len(pairs), 8192)]
                               + [np.zeros((0, 2), np.uint64)])
        _save_edges(st, out, f"edges_{r:05d}", np.r_[pairs, pairs[:, ::-1]], n_part)


def _save_edges(st, out, name, edges, n_part):
    # by the partition of their first document: its input task's share of the tasks, so that
    # partitions are runs of documents in the input's order (and clusters come out in it)
    n = np.uint64(len(st.tasks))
    _save_parts(out, name, edges, (edges[:, 0] >> np.uint64(32)) * np.uint64(n_part) // n, n_part)


# -----------------------------------------------------------------------------
# the connected components of the agreeing pairs, over partitions of the documents
#
# Kiveris et al., "Connected Components in MapReduce and Beyond" (SoCC 2014). A step reads the
# neighbours of every node u of a partition and emits edges that keep the components: large-star
# links each neighbour of u larger than u to the smallest of u and its neighbours; small-star
# links u and its smaller neighbours to the smallest of them. Alternated, they reach, in
# O(log^2 n) rounds, a star around the smallest document of each component: the root roots()
# finds in one process. A step holds one range of one partition (a node's neighbours together):
# memory in the largest cluster, not in the corpus nor the number of pairs.

def star_step(edges, large):
    """Large-star (large=True) or small-star on edges (u, v), sorted, unique and holding every
    edge of each u: the edges it emits (both ways, maybe repeated), and whether these nodes are
    already stars around their smallest (each node's neighbours all larger, or one smaller
    neighbour alone), which holds of every node once the components are done."""
    u, v = edges[:, 0], edges[:, 1]
    new = np.ones(len(u), bool)
    new[1:] = u[1:] != u[:-1]
    start = np.flatnonzero(new)
    group = np.cumsum(new) - 1
    low = v[start][group]  # each row's node's smallest neighbour
    m = np.minimum(u, low)
    stars = bool(((low > u) | (np.diff(np.r_[start, len(u)]) == 1)[group]).all())
    if large:
        a, b = v[v > u], m[v > u]
    else:
        keep, head = (v < u) & (v != m), start[m[start] != u[start]]
        a, b = np.r_[v[keep], u[head]], np.r_[m[keep], m[head]]
    return np.r_[np.c_[a, b], np.c_[b, a]].astype(np.uint64), stars


def _unique_rows(edges):
    order, new = _groups(edges, edges[:, 0])
    return edges[order][new]


def _star_task(st, k, out, n_part, phase, tasks, large):
    stars = True
    for r, edges in enumerate(_ranges(list(_files(st, phase, tasks, "edges")), k, 2)):
        emitted, done = star_step(_unique_rows(edges), large)
        stars &= done
        _save_edges(st, out, f"edges_{r:05d}", emitted, n_part)
    write_json(os.path.join(out, "stars.json"), dict(stars=stars))


def _stars(st, phase, n_part):
    """Whether every task of phase found its nodes stars: the components are done."""
    return all((read_json(os.path.join(st.path(phase, k), "stars.json")) or {}).get("stars")
               for k in range(n_part))


def _cluster_task(st, k, out, n_part, phase):
    # the stars of partition k: (doc, root) of each near-duplicate, and each cluster in order
    names = _Lookup(st)
    with open(os.path.join(out, "clusters.jsonl"), "w", encoding="utf-8") as f:
        paths = list(_files(st, phase, range(n_part), "edges"))
        for r, edges in enumerate(_ranges(paths, k, 2)):
            edges = _unique_rows(edges)
            near = edges[:, 1] < edges[:, 0]  # (doc, root), sorted by doc
            np.save(os.path.join(out, f"near_{r:05d}.npy"), edges[near])
            star = edges[~near]
            for members in np.split(star, np.flatnonzero(np.diff(star[:, 0])) + 1):
                if len(members):
                    docs = [int(members[0, 0])] + members[:, 1].tolist()
                    f.write(json.dumps([dict(zip(("id", "start"), names.name(d))) for d in docs],
                                       ensure_ascii=False) + "\n")


def _decided(st, i, n_part):
    """What exact and near dedup decided about the documents of task i: {doc: kept doc} each."""
    lo, hi = np.uint64(i) << np.uint64(32), np.uint64(i + 1) << np.uint64(32)

    def mine(a):
        return a[np.searchsorted(a[:, 0], lo):np.searchsorted(a[:, 0], hi)].tolist()

    copies = {d: o for c in _each(st, "copies", range(n_part), "copies") for d, o in mine(c)}
    return copies, {d: r for a in _each(st, "clusters", range(n_part), "near") for d, r in mine(a)}


def _keys_task(st, i, out, p, n_part):
    # the paragraph keys of the documents kept: those of a copy or a near-duplicate own nothing
    copies, near = _decided(st, i, n_part)
    paras = np.load(os.path.join(st.path("signatures", i), "paras.npy"))
    gone = np.array(sorted(set(copies) | set(near)), np.uint64)
    rec = paras[~_isin(paras[:, 0], gone)][:, [1, 2, 0]]  # (key_hi, key_lo, doc)
    _save_parts(out, "paras", rec, rec[:, 0] % np.uint64(n_part), n_part)


def _paragraph_task(st, r, out, p, n_part):
    paths = list(_files(st, "keys", range(len(st.tasks)), "paras"))
    for k, rec in enumerate(_ranges(paths, r, 3)):
        np.save(os.path.join(out, f"drops_{k:05d}.npy"), paragraph_drops(rec[:, [2, 0, 1]]))


def _filter_task(st, i, out, p, n_part, shard_bytes):
    copy_of, near_of = _decided(st, i, n_part)
    lo, hi = np.uint64(i) << np.uint64(32), np.uint64(i + 1) << np.uint64(32)
    drops = {}
    for a in _each(st, "paragraphs", range(n_part), "drops"):
        for d, x, y in a[np.searchsorted(a[:, 0], lo):np.searchsorted(a[:, 0], hi)].tolist():
            drops.setdefault(d, set()).add((x, y))
    names, problems, report = _Lookup(st), [], {}
    with DocWriter(out, "docs", shard_bytes) as kept, \
         DocWriter(out, "removed", shard_bytes) as removed:
        for j, doc in enumerate(st.documents(i, problems)):
            d, size = (i << 32) | j, len(doc["text"].encode())
            of = copy_of.get(d, near_of.get(d))
            text = (doc["text"] if of is not None
                    else without_paragraphs(doc["text"], drops.get(d), p["min_para"]))
            if d in copy_of:
                reason = "exact"
            elif d in near_of:
                reason = "near"
            elif text is None:
                reason = "paragraphs"
            else:
                reason = None
            if reason:
                removed.write(dict(id=doc["id"], source=doc["source"], reason=reason,
                                   duplicate_of=names.name(of)[0] if of is not None else None))
                count(report, doc["source"], size, reason)
            else:
                kept.write({**doc, "text": text})
                count(report, doc["source"], size, size_out=len(text.encode()))
    write_json(os.path.join(out, "report.json"),
               dict(docs=kept.files, removed=removed.files, sources=report, problems=problems))


def dedup_corpus(src, out_dir, params=None, shard_mb=16, workers=0, rank=0, world=1):
    """Exact, near-duplicate (MinHash-LSH) and paragraph dedup over all documents of all sources
    together (the first occurrence wins, in the input's order); removed/ names the reason and
    the document kept instead, clusters/clusters.jsonl every near-duplicate cluster (the id and
    start of each member)."""
    if already_done(out_dir, "dedup"):
        return read_json(os.path.join(out_dir, "report.json"))
    p = {**DEDUP, **(params or {})}
    size = sum(map(os.path.getsize, input_files(src)[0]))
    n_part = min(MAX_PARTS, max(1, -(-size // PART_BYTES)))
    settings = dict(p, partitions=n_part)
    with Stage("dedup", src, out_dir, settings, shard_mb * 2**20, workers, rank, world,
               documents=True) as st:
        t0, n = time.time(), len(st.tasks)
        st.run("signatures", n, _signature_task, p, n_part)
        st.run("copies", n_part, _copies_task, p, n_part)
        st.run("buckets", n_part * p["bands"], _bucket_task, p, n_part)
        phase, tasks = "buckets", range(n_part * p["bands"])
        for r in itertools.count():  # until the components are stars (a few rounds)
            st.run(f"large{r}", n_part, _star_task, n_part, phase, tasks, True)
            if st.done or _stars(st, f"large{r}", n_part):
                break
            st.run(f"small{r}", n_part, _star_task, n_part, f"large{r}", range(n_part), False)
            phase, tasks = f"small{r}", range(n_part)
        st.run("clusters", n_part, _cluster_task, n_part, f"large{r}")
        st.run("keys", n, _keys_task, p, n_part)
        st.run("paragraphs", n_part, _paragraph_task, p, n_part)
        st.run("filter", n, _filter_task, p, n_part, int(shard_mb * 2**20))

        def finish(tmp):
            with contextlib.suppress(FileExistsError):  # not makedirs: see Stage.move
                os.mkdir(os.path.join(tmp, "clusters"))
            with whole(os.path.join(tmp, "clusters", "clusters.jsonl"), "wb") as f:
                for k in range(n_part):  # partitions: runs of documents, in order
                    with open(os.path.join(st.path("clusters", k), "clusters.jsonl"), "rb") as g:
                        shutil.copyfileobj(g, f)
            clusters = sum(1 for _ in open(os.path.join(tmp, "clusters", "clusters.jsonl"),
                                           encoding="utf-8"))
            report = dict(params=p, partitions=n_part, clusters=clusters)
            finish_documents(st, tmp, "filter", report, time.time() - t0)
            print(f"dedup: {clusters} near-duplicate clusters ({out_dir}/clusters/clusters.jsonl)")
        st.finish(finish)
    return read_json(os.path.join(out_dir, "report.json"))
