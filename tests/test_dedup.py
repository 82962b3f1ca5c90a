"""curate.py's dedup stage: planted near-duplicates built from real text (data/tiny), recall and
false positives measured; MinHash, LSH and paragraph dedup on hand-made cases."""
import json, os, random, time

import numpy as np
import pytest

import curate as dedup
from conftest import ROOT

TINY = os.path.join(ROOT, "data", "tiny")


def load(name):
    with open(f"{TINY}/{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def chunks(texts, rng, lo=1000, hi=4000):
    """Real text cut at paragraph (or, where a text has no blank lines, line) boundaries into
    pieces of lo..hi UTF-8 bytes (log-uniform) with at least two units each; returns
    (text, separator)."""
    out = []
    size = lambda: int(lo * (hi / lo) ** rng.random())
    for text in texts:
        sep = "\n\n" if text.count("\n\n") >= 3 else "\n"
        units = [u for u in text.split(sep) if u.strip()]
        cur, target = [], size()
        for u in units:
            cur.append(u)
            if len(sep.join(cur).encode()) >= target and len(cur) >= 2:
                out.append((sep.join(cur), sep))
                cur, target = [], size()
    return out


def is_cjk(ch):
    return "\u4e00" <= ch <= "\u9fff"


BOILER_TOP = {
    "en": ["Posted on 2023-04-01 by admin", "Home > Books > Classics", "Last updated: March 3, 2021"],
    "zh": ["发布时间：2023-04-01 来源：本站", "首页 > 古籍 > 经典", "作者：admin 阅读：1024次"]}
BOILER_BOTTOM = {
    "en": ["Share this article", "Copyright 2023 Example Media. All rights reserved.",
           "We use cookies to improve your experience. By continuing to browse this site you agree "
           "to our use of cookies. Accept"],
    "zh": ["分享到：微信 微博 QQ空间", "版权所有 © 2023 示例网 保留所有权利",
           "本网站使用Cookie以提升您的浏览体验，继续浏览即表示您同意我们使用Cookie。"]}


def change_words(text, lang, rng, vocab):
    """Replace 2-5% of the words (edit_words, below)."""
    return edit_words(text, lang, rng.uniform(0.02, 0.05), rng, vocab)


def variant(kind, text, sep, lang, rng, vocab):
    if kind == "exact":
        return text
    if kind == "case/space":  # identical after normalisation
        t = text.replace("\n", " \r\n").replace(" ", "  ").replace("，", ",").replace("。", ". ")
        return t.upper() if lang == "en" else "  " + t + "\n\n"
    if kind == "words":
        return change_words(text, lang, rng, vocab)
    if kind == "boiler top":
        return rng.choice(BOILER_TOP[lang]) + "\n\n" + text
    if kind == "boiler bottom":
        return text + "\n\n" + rng.choice(BOILER_BOTTOM[lang])
    if kind == "swap":
        units = text.split(sep)
        i, j = rng.sample(range(len(units)), 2)
        units[i], units[j] = units[j], units[i]
        return sep.join(units)
    raise ValueError(kind)


KINDS = ["exact", "case/space", "words", "boiler top", "boiler bottom", "swap"]


@pytest.fixture(scope="module")
def planted():
    """Every en and zh chunk is an original with two variants of different kinds. Chunks of one
    book share style and vocabulary: the hard negatives. (No code: the stdlib holds real
    near-duplicates, e.g. bisect_left/bisect_right at Jaccard 0.86.)"""
    rng = random.Random(1234)
    en, zh = load("en"), load("zh")
    vocab = {"en": sorted({w for t in en for w in t.split() if w.isalpha()}),
             "zh": sorted({ch for t in zh for ch in t if is_cjk(ch)})}
    originals = [(t, s, "en") for t, s in chunks(en, rng)] + [(t, s, "zh") for t, s in chunks(zh, rng)]
    docs, family, pairs = [], [], []  # pairs: (original index, variant index, kind)
    for f, (text, sep, lang) in enumerate(originals):
        docs.append(text)
        family.append(f)
    for f, (text, sep, lang) in enumerate(originals):
        for kind in (KINDS[f % 6], KINDS[(f + 3) % 6]):
            pairs.append((f, len(docs), kind, lang))
            docs.append(variant(kind, text, sep, lang, rng, vocab[lang]))
            family.append(f)
    order = list(range(len(docs)))  # shuffle, so that variants are not always after the original
    rng.shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    docs = [docs[i] for i in order]
    family = [family[i] for i in order]
    pairs = [(where[a], where[b], kind, lang) for a, b, kind, lang in pairs]
    return docs, np.array(family), pairs, len(originals)


def roots(n, result):
    """The kept document each document was merged into (exact or near)."""
    into = {i: k for i, reason, k in result["removed"] if reason in ("exact", "near")}
    out = []
    for i in range(n):
        while i in into:
            i = into[i]
        out.append(i)
    return np.array(out)


def test_recall_and_false_positives(planted):
    docs, family, pairs, n_orig = planted
    t0 = time.perf_counter()
    result = dedup.dedup_texts(docs)
    dt = time.perf_counter() - t0
    root = roots(len(docs), result)
    found = {}
    for a, b, kind, lang in pairs:
        found.setdefault(f"{kind}/{lang}", []).append(root[a] == root[b])
    hits = [x for v in found.values() for x in v]
    recall = np.mean(hits)
    # distinct pairs: documents of different families; merged: same root
    same_root = root[:, None] == root[None, :]
    distinct = family[:, None] != family[None, :]
    upper = np.triu(np.ones_like(distinct), 1)
    n_distinct = int((distinct & upper).sum())
    wrong = int((same_root & distinct & upper).sum())
    # margin: the most similar distinct pair, by the full 128-permutation signature
    sigs = np.stack([dedup.minhash(d) for d in docs])
    est = np.zeros((len(docs), len(docs)))
    for k in range(0, sigs.shape[1], 16):
        est += (sigs[:, None, k:k + 16] == sigs[None, :, k:k + 16]).sum(-1)
    est /= sigs.shape[1]
    print(f"\n{len(docs)} docs ({n_orig} originals, {len(pairs)} planted pairs), dedup {dt:.2f}s")
    print(f"recall {recall:.3f} ({sum(hits)}/{len(hits)}); " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in sorted(found.items())))
    print(f"false positives {wrong} of {n_distinct} distinct pairs; most similar distinct pair: estimated Jaccard {est[distinct].max():.3f}")
    print(f"removed: " + ", ".join(f"{r} {sum(x[1] == r for x in result['removed'])}" for r in ("exact", "near", "paragraphs")))
    assert n_orig >= 200
    assert recall >= 0.9
    assert wrong == 0
    for a, b, kind, _ in pairs:  # exact and normalised-exact copies go at stage (a)
        if kind in ("exact", "case/space"):
            assert (max(a, b), "exact", min(a, b)) in result["removed"]
    cluster_of = {i: min(c) for c in result["clusters"] for i in c}
    for i, reason, k in result["removed"]:
        if reason == "near":
            assert cluster_of[i] == k and k < i


def edit_words(text, lang, rate, rng, vocab):
    """rate of the words replaced (Chinese: rate / 1.5 of the CJK characters, a word being ~1.5)."""
    if lang == "en":
        words = text.split(" ")
        for i in rng.sample(range(len(words)), max(1, round(rate * len(words)))):
            words[i] = rng.choice(vocab)
        return " ".join(words)
    chars = list(text)
    pos = [i for i, ch in enumerate(chars) if is_cjk(ch)]
    for i in rng.sample(pos, max(1, round(rate * len(pos) / 1.5))):
        chars[i] = rng.choice(vocab)
    return "".join(chars)


def move_paragraph(text, sep, rng):
    units = text.split(sep)
    unit = units.pop(rng.randrange(len(units)))
    units.insert(rng.randrange(len(units) + 1), unit)
    return sep.join(units)


EDITS = ("1%", "3%", "5%", "moved", "boiler", "1%+moved+boiler")


def planted_edits(seed=7):
    """{set: (documents, family of each, [(original, variant, edit)])}: real text (data/tiny's
    English and Chinese cut into 1-4 KB pieces, and data/langid's Chinese technical pages, full
    of commands and identifiers), each original with one variant per edit in EDITS: words
    changed, a paragraph moved, a boilerplate line added, and all three at 1%."""
    rng = random.Random(seed)
    en, zh = load("en"), load("zh")
    rows = [json.loads(line) for line in open(os.path.join(ROOT, "data", "langid", "langid.jsonl"), encoding="utf-8")]
    tech = [r["text"] for r in rows if r["kind"] in ("zh-tech", "zh-man", "markdown-zh") and len(r["text"]) > 800]
    vocab = {"en": sorted({w for t in en for w in t.split() if w.isalpha()}),
             "zh": sorted({ch for t in zh for ch in t if is_cjk(ch)})}
    sets = {"en": chunks(en, rng), "zh": chunks(zh, rng),
            "zh-tech": [(t, "\n\n" if t.count("\n\n") >= 2 else "\n") for t in tech]}
    out = {}
    for name, originals in sets.items():
        lang = name[:2]
        boiler = BOILER_TOP[lang] + BOILER_BOTTOM[lang]
        docs, family, pairs = [t for t, _ in originals], list(range(len(originals))), []
        for f, (text, sep) in enumerate(originals):
            for edit in EDITS:
                if edit.endswith("%"):
                    v = edit_words(text, lang, float(edit[:-1]) / 100, rng, vocab[lang])
                elif edit == "moved":
                    v = move_paragraph(text, sep, rng)
                elif edit == "boiler":
                    v = rng.choice(boiler) + sep + text
                else:
                    v = rng.choice(boiler) + sep + move_paragraph(edit_words(text, lang, 0.01, rng, vocab[lang]), sep, rng)
                pairs.append((f, len(docs), edit))
                docs.append(v)
                family.append(f)
        out[name] = docs, np.array(family), pairs
    return out


def test_recall_at_three_edit_levels():
    # the same measurement runs against datatrove's MinHash in benchmarks/curate_bench.py
    # (measured 2026-12-02: en 1.00 / 0.96 / 0.63, zh 1.00 / 1.00 / 0.85, zh-tech 1.00 / 0.99 / 0.97;
    # with shingles sized per document and exact verification, zh-tech was 1.00 / 0.97 / 0.88)
    aims = {"en": (1.0, 0.9, 0.6), "zh": (1.0, 0.95, 0.8), "zh-tech": (1.0, 0.95, 0.9)}
    for name, (docs, family, pairs) in planted_edits().items():
        root = roots(len(docs), dedup.dedup_texts(docs))
        recall = {e: np.mean([root[a] == root[b] for a, b, k in pairs if k == e]) for e in EDITS}
        print(f"\n{name}: {len(docs) // (1 + len(EDITS))} originals; recall " + ", ".join(f"{e} {r:.2f}" for e, r in recall.items()))
        assert all(recall[e] >= a for e, a in zip(("1%", "3%", "5%"), aims[name])), (name, recall)
        assert min(recall["moved"], recall["boiler"], recall["1%+moved+boiler"]) >= 0.95, (name, recall)
        distinct = family[:, None] != family[None, :]
        assert not (root[:, None] == root[None, :])[distinct].any(), name  # no false merge


def test_norm_and_exact_key():
    assert dedup.norm_for_dedup("  Hello,   WORLD!!\n\t２０２３ — ok_ok ") == "hello world 2023 ok ok"
    assert dedup.norm_for_dedup("子曰：“学而时习之，不亦说乎？”") == "子曰 学而时习之 不亦说乎"
    assert dedup.exact_key("Alice was  beginning.") == dedup.exact_key("ALICE WAS BEGINNING")
    assert dedup.exact_key("Alice was beginning") != dedup.exact_key("Alice was ending")


def test_minhash_basics():
    s = dedup.minhash("The quick brown fox jumps over the lazy dog.")
    assert s.shape == (128,) and s.dtype == np.uint32
    # pinned: a change here would make stored signatures stop matching new ones
    assert s[:4].tolist() == [50885248, 5699978, 194296694, 89884433]
    assert (dedup.minhash("ab") != dedup.minhash("ac")).any()  # shorter than n: one shingle
    assert (dedup.minhash("") == dedup.minhash("  ...  ")).all()
    assert (dedup.minhash("x", seed=1) != dedup.minhash("x", seed=0)).any()
    # signature agreement estimates Jaccard
    rng = random.Random(0)
    words = load("en")[0].split()[:2000]
    other = list(words)
    for i in rng.sample(range(len(words)), 100):
        other[i] = "zzzz"
    a, b = " ".join(words), " ".join(other)
    x, y = dedup.shingles(a), dedup.shingles(b)
    true = len(np.intersect1d(x, y)) / len(np.union1d(x, y))
    est = np.mean(dedup.minhash(a, num_perm=1024) == dedup.minhash(b, num_perm=1024))
    assert abs(est - true) < 0.05, (est, true)



def test_determinism(planted):
    docs = planted[0][:300]
    s1 = np.stack([dedup.minhash(d) for d in docs])
    s2 = np.stack([dedup.minhash(d) for d in docs])
    assert (s1 == s2).all()
    assert (dedup.lsh_clusters(s1) == dedup.lsh_clusters(s2)).all()
    assert dedup.dedup_texts(docs) == dedup.dedup_texts(docs) == dedup.dedup_texts(docs, workers=2)  # pool: same
    # reversed order: same signatures per document, same partition
    rev = np.stack([dedup.minhash(d) for d in docs[::-1]])
    assert (rev[::-1] == s1).all()
    r1, r2 = dedup.lsh_clusters(s1), dedup.lsh_clusters(rev)[::-1]
    n = len(docs)
    assert ((r1[:, None] == r1[None, :]) == (r2[:, None] == r2[None, :])).all()
    assert len(set(r1.tolist())) < n  # there are clusters to compare


def test_lsh_chain():
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**32, (5, 128), dtype=np.uint32)  # all different
    sig[1, :13] = sig[0, :13]           # A ~ B in band 0
    sig[2, 13:26] = sig[1, 13:26]       # B ~ C in band 1
    sig[4, 117:] = sig[3, 117:]         # equal only in the 11 unused permutations
    assert dedup.lsh_clusters(sig).tolist() == [0, 0, 0, 3, 4]
    assert dedup.lsh_clusters(sig[[2, 4, 1, 3, 0]]).tolist() == [0, 1, 0, 3, 0]
    sig[3, 104:117] = sig[2, 104:117]   # D ~ C in the last band joins the chain
    assert dedup.lsh_clusters(sig).tolist() == [0, 0, 0, 0, 4]
    # small hand-made case, 2 bands x 2 rows
    s = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 7, 9, 9], [5, 6, 7, 8]], dtype=np.uint32)
    assert dedup.lsh_clusters(s, bands=2, rows=2).tolist() == [0, 0, 0, 3]


def test_paragraph_dedup():
    paras = [p for p in load("en")[2].split("\n\n") if len(p) > 200]
    p, q, r, s = paras[:4]
    docs = ["CHAPTER I\n\n" + p + "\n\n" + q,
            "CHAPTER I\n\n" + p.upper() + "\n\n" + r,  # p again, differently cased
            "Share this\n\n" + q,                        # nothing long left: dropped
            s + "\n\n" + s]                              # repeats within a document stay
    result = dedup.dedup_texts(docs)
    assert result["keep"] == [0, 1, 3]
    assert result["texts"] == {1: "CHAPTER I\n\n" + r}
    assert result["removed"] == [(2, "paragraphs", None)]
    assert result["clusters"] == []


def test_dedup_result_shape():
    a = load("en")[3][:3000]
    docs = [a, "something else entirely, long enough " * 5, a.replace("the", "The"), a + "\n\nShare this article"]
    result = dedup.dedup_texts(docs)
    assert result["keep"] == [0, 1]
    assert result["removed"] == [(2, "exact", 0), (3, "near", 0)]
    assert result["clusters"] == [[0, 3]]


def test_throughput():
    """MinHash MB/s on ~5 MB of en+zh+code cut into 1-5 KB documents (the number quoted in dedup.py)."""
    rng = random.Random(0)
    texts = load("en") + load("zh") + load("code")
    docs = []
    while sum(len(d.encode()) for d in docs) < 5e6:
        docs += [t for t, _ in chunks(texts, rng)]
    mb = sum(len(d.encode()) for d in docs) / 1e6
    t0 = time.perf_counter()
    for d in docs:
        dedup.minhash(d)
    dt = time.perf_counter() - t0
    print(f"\nminhash: {mb:.2f} MB in {len(docs)} docs, {dt:.2f}s, {mb / dt:.1f} MB/s")
    assert mb / dt > 1.0  # loose: the quoted number is the measurement, this only catches a collapse
