"""dedup.py: planted near-duplicates built from real text (data/tiny, data/langid), recall and
false positives measured; MinHash, LSH and paragraph dedup on hand-made cases."""
import random, time

import numpy as np
import pytest

import dedup
import helpers
from helpers import BOILER_BOTTOM, BOILER_TOP, EDITS, chunks, edit_words, is_cjk, kept_roots, load, planted_edits


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


def test_recall_and_false_positives(planted):
    docs, family, pairs, n_orig = planted
    t0 = time.perf_counter()
    result = dedup.dedup_texts(docs)
    dt = time.perf_counter() - t0
    root = kept_roots(len(docs), result)
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
    print("removed: " + ", ".join(f"{r} {sum(x[1] == r for x in result['removed'])}" for r in ("exact", "near", "paragraphs")))
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


def test_recall_at_three_edit_levels():
    # the same measurement runs against datatrove's MinHash in benchmarks/curate_bench.py (BENCHMARKS.md)
    aims = {"en": (1.0, 0.9, 0.6), "zh": (1.0, 0.95, 0.8), "zh-tech": (1.0, 0.95, 0.9)}
    for name, (docs, family, pairs) in planted_edits().items():
        root = kept_roots(len(docs), dedup.dedup_texts(docs))
        recall = {e: np.mean([root[a] == root[b] for a, b, k in pairs if k == e]) for e in EDITS}
        print(f"\n{name}: {len(docs) // (1 + len(EDITS))} originals; recall " + ", ".join(f"{e} {r:.2f}" for e, r in recall.items()))
        assert all(recall[e] >= a for e, a in zip(("1%", "3%", "5%"), aims[name])), (name, recall)
        assert min(recall["moved"], recall["boiler"], recall["1%+moved+boiler"]) >= 0.95, (name, recall)
        distinct = family[:, None] != family[None, :]
        assert not (root[:, None] == root[None, :])[distinct].any(), name  # no false merge


def test_norm_and_exact_key():
    assert dedup.norm_for_dedup("  Hello,   WORLD!!\n\t２０２３ — ok_ok ") == "hello world 2023 ok ok"
    assert dedup.norm_for_dedup("子曰：“学而时习之，不亦说乎？”") == "子曰 学而时习之 不亦说乎"
    assert helpers.exact_key("Alice was  beginning.") == helpers.exact_key("ALICE WAS BEGINNING")
    assert helpers.exact_key("Alice was beginning") != helpers.exact_key("Alice was ending")


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
    assert (helpers.lsh_clusters(s1) == helpers.lsh_clusters(s2)).all()
    assert dedup.dedup_texts(docs) == dedup.dedup_texts(docs) == dedup.dedup_texts(docs, workers=2)  # pool: same
    # reversed order: same signatures per document, same partition
    rev = np.stack([dedup.minhash(d) for d in docs[::-1]])
    assert (rev[::-1] == s1).all()
    r1, r2 = helpers.lsh_clusters(s1), helpers.lsh_clusters(rev)[::-1]
    n = len(docs)
    assert ((r1[:, None] == r1[None, :]) == (r2[:, None] == r2[None, :])).all()
    assert len(set(r1.tolist())) < n  # there are clusters to compare


def test_lsh_chain():
    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**32, (5, 128), dtype=np.uint32)  # all different
    sig[1, :13] = sig[0, :13]           # A ~ B in band 0
    sig[2, 13:26] = sig[1, 13:26]       # B ~ C in band 1
    sig[4, 117:] = sig[3, 117:]         # equal only in the 11 unused permutations
    assert helpers.lsh_clusters(sig).tolist() == [0, 0, 0, 3, 4]
    assert helpers.lsh_clusters(sig[[2, 4, 1, 3, 0]]).tolist() == [0, 1, 0, 3, 0]
    sig[3, 104:117] = sig[2, 104:117]   # D ~ C in the last band joins the chain
    assert helpers.lsh_clusters(sig).tolist() == [0, 0, 0, 0, 4]
    # small hand-made case, 2 bands x 2 rows
    s = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 7, 9, 9], [5, 6, 7, 8]], dtype=np.uint32)
    assert helpers.lsh_clusters(s, bands=2, rows=2).tolist() == [0, 0, 0, 3]


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


def star_components(pairs, n_tasks, n_part):
    """(doc, root) of every document with a smaller one in its component, as the dedup stage
    finds them: each star step on each partition of documents (runs of input tasks) alone, its
    edges made unique there, until a large-star step finds stars; and the rounds it took."""
    edges = np.r_[pairs, pairs[:, ::-1]].astype(np.uint64)
    for rounds in range(1, 200):
        for large in (True, False):
            part = (edges[:, 0] >> np.uint64(32)) * np.uint64(n_part) // np.uint64(n_tasks)
            steps = [dedup.star_step(dedup._unique_rows(edges[part == k]), large) for k in range(n_part)]
            if large and all(stars for _, stars in steps):
                edges = dedup._unique_rows(edges)
                return edges[edges[:, 1] < edges[:, 0]], rounds
            edges = np.concatenate([e for e, _ in steps])
    raise AssertionError("no stars after 200 rounds")


def test_star_steps_over_partitions_find_the_components_that_roots_finds():
    # the sharded clusters phase against the one-process union (min-label propagation) on
    # graphs that are hard for it: long paths and trees with random labels, a clique, a star
    # whose centre is its largest node, random sparse graphs; documents are task << 32 | index
    rng = np.random.default_rng(0)
    n_tasks = 40
    ids = np.unique((rng.integers(0, n_tasks, 20000, dtype=np.uint64) << np.uint64(32))
                    + rng.integers(0, 5000, 20000, dtype=np.uint64))
    rng.shuffle(ids)

    def path(nodes):
        return np.c_[nodes[:-1], nodes[1:]]

    graphs = {
        "path of 3000": path(ids[:3000]),
        "tree of 2000": np.c_[ids[1:2000], ids[rng.integers(0, np.arange(1, 2000))]],
        "clique of 40": np.array([(a, b) for a in ids[:40] for b in ids[:40] if a < b]),
        "star around its largest": np.c_[np.sort(ids[:500])[:-1], np.full(499, np.sort(ids[:500])[-1])],
        "random sparse": ids[rng.integers(0, 4000, (3000, 2))],
        "paths and a clique": np.r_[path(ids[:300]), path(ids[300:700]), path(ids[650:660]),
                                    [(a, b) for a in ids[900:920] for b in ids[900:920] if a < b]],
        "none": np.zeros((0, 2), np.uint64),
    }
    for name, pairs in graphs.items():
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        nodes, root = dedup.roots(np.unique(np.sort(pairs, axis=1), axis=0))
        near = np.c_[nodes, root][nodes != root]
        for n_part in (1, 3, 7):
            got, rounds = star_components(pairs, n_tasks, n_part)
            assert np.array_equal(got, near), (name, n_part)
        print(f"{name}: {len(pairs)} edges, {len(near)} near-duplicates, {rounds} rounds")
        assert rounds <= np.log2(len(nodes) + 2) ** 2, (name, rounds)  # the O(log^2 n) bound


def test_ranges_hold_about_part_records_whatever_the_keys(tmp_path, monkeypatch):
    # a partition read in ranges cut at sampled quantiles: every record once, in runs of equal
    # first values never cut, none over its share by much, for hashes and for documents'
    # places crowded into a few tasks (where cuts of equal width would put most in one range)
    monkeypatch.setattr(dedup, "PART_RECORDS", 1000)
    rng = np.random.default_rng(0)
    for name, first in {"hashes": lambda n: rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2),
                        "places": lambda n: (rng.integers(0, 3, n, dtype=np.uint64) << np.uint64(32))
                        + rng.integers(0, 500, n, dtype=np.uint64)}.items():
        paths, everything = [], []
        for f in range(7):  # files of the records of 2 partitions, as _save_parts writes them
            n = int(rng.integers(200, 5000))
            rec = np.c_[first(n), rng.integers(0, 9, n, dtype=np.uint64)]
            part = rng.integers(0, 2, n).astype(np.uint64)
            dedup._save_parts(str(tmp_path), f"{name}_{f}", rec, part, 2)
            paths.append(str(tmp_path / f"{name}_{f}.npy"))
            everything.append(rec[part == 1])
        ranges = list(dedup._ranges(paths, 1, 2))
        got, want = np.concatenate(ranges), np.concatenate(everything)
        assert np.array_equal(dedup._unique_rows(got), dedup._unique_rows(want)) and len(got) == len(want), name
        assert len(ranges) >= len(want) // 1000, name
        assert max(map(len, ranges)) <= 1300, (name, sorted(map(len, ranges)))
        firsts = [set(r[:, 0].tolist()) for r in ranges]
        assert all(not (a & b) for i, a in enumerate(firsts) for b in firsts[i + 1:]), name  # runs never cut
