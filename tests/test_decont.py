"""Decontamination (decont.py): n-grams that survive light edits, the index of task items, and the
stage over shards on real documents (data/tiny) with the embedded task items (data/evals) planted in
some of them, reformatted."""
import json, os, random

import pytest

import decont
import dedup
import stage
from helpers import ROOT, TINY

EVALS = os.path.join(ROOT, "data", "evals")


def lines(folder):
    return [json.loads(l) for f in sorted(os.listdir(folder)) if f.endswith(".jsonl") for l in open(os.path.join(folder, f))]


def gram_tokens(text, **kw):
    """The n-grams of text, as tuples of their tokens' text."""
    normed = dedup.norm_for_dedup(text)
    _, s, e, tok = decont.grams(text, normed=normed, **kw)
    words = [normed[a:b] for a, b in zip(tok[2], tok[3])]
    return [tuple(words[a:b + 1]) for a, b in zip(s, e)]


def test_tokens_and_grams_by_hand():
    text = "Ｔｈｅ Quick, brown fox (A) jumps over 1. the lazy dog; 学而时习之，不亦说乎。"
    normed = dedup.norm_for_dedup(text)
    _, cjk, s, e = decont.tokens(normed)
    toks = [normed[a:b] for a, b in zip(s, e)]
    assert toks == ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog",
                    *"学而时习之不亦说乎"]  # "(A)" and "1." are labels: dropped
    assert cjk.tolist() == [False] * 9 + [True] * 9
    # 3 words from a word, 4 characters from a CJK character; the last ones run past the end
    got = gram_tokens(text, n_words=3, n_cjk=4)
    words = toks
    want = [tuple(words[i:i + (4 if i >= 9 else 3)]) for i in range(len(words)) if i + (4 if i >= 9 else 3) <= len(words)]
    assert want[:2] == [("the", "quick", "brown"), ("quick", "brown", "fox")] and want[-1] == tuple("不亦说乎")
    assert got == want
    h = decont.grams(text, n_words=3, n_cjk=4)[0]
    assert len(h) == len(got) and len(set(h.tolist())) == len(set(got))


def test_grams_survive_light_edits_and_do_not_depend_on_position():
    item = {"question": "Which gas do plants absorb from the air to make their food through photosynthesis?",
            "choices": ["Oxygen", "Carbon dioxide", "Nitrogen", "Hydrogen"], "answer": 1}
    text = decont.item_text(item)
    mine = set(decont.grams(text)[0].tolist())
    assert mine
    edited = ("Notes from class.\n\nQ: WHICH GAS DO PLANTS ABSORB FROM THE AIR\nto make their food "
              "through photosynthesis?\nA. Oxygen\nB. Carbon dioxide\nC. Nitrogen\nD. Hydrogen\n\nThe answer is B.")
    theirs = set(decont.grams(edited)[0].tolist())
    assert mine <= theirs  # every n-gram of the item, despite case, line breaks and labels
    zh = {"question": "“学而时习之，不亦说乎”出自哪部典籍？", "A": "《论语》", "B": "《史记》", "C": "《红楼梦》", "D": "《水浒传》"}
    full_width = "练习题：“学而时习之，不亦说乎”出自哪部典籍？\nＡ．《论语》 Ｂ．《史记》\nＣ．《红楼梦》 Ｄ．《水浒传》"
    z = set(decont.grams(decont.item_text(zh))[0].tolist())
    assert z and z <= set(decont.grams(full_width)[0].tolist())


def test_the_stage_drops_planted_items_and_keeps_the_rest(tmp_path):
    rng = random.Random(0)
    docs = [d for name in ("en", "zh", "code") for d in stage.iter_documents(os.path.join(TINY, f"{name}.jsonl"), [])]
    items = [(rel, line, json.loads(raw)) for rel in decont.task_files(EVALS)
             for line, raw in enumerate(open(os.path.join(EVALS, rel), encoding="utf-8"), 1)]
    long_enough = [(rel, line, item) for rel, line, item in items if len(decont.grams(decont.item_text(item))[0])]
    planted, hosts = {}, list(docs)
    for k, (rel, line, item) in enumerate(long_enough):  # each into a real document, reformatted
        host = hosts[rng.randrange(len(hosts))]
        text = "\n".join(f"{chr(65 + j)}. {t}" if j else t.upper() for j, t in enumerate(decont.item_text(item).split("\n")))
        cut = rng.randrange(len(host["text"]) + 1)
        planted[f"planted-{k}"] = (rel, line)
        docs.append({**host, "id": f"planted-{k}", "text": host["text"][:cut] + "\n" + text + "\n" + host["text"][cut:]})
    rng.shuffle(docs)
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "docs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        report = decont.decontaminate_corpus(str(src), str(out), EVALS, shard_mb=0.05, workers=workers)
        outs[workers] = {f: open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(out) for f in fs
                         if f.endswith(".jsonl")}
    assert outs[1] == outs[2]  # the same bytes for any number of workers
    removed = {r["id"]: r for r in lines(tmp_path / "out1" / "removed")}
    assert set(removed) == set(planted)  # every planted document, and nothing else
    for k, r in removed.items():
        g = decont.grams(r["ngram"])[0]  # the n-gram reported: one, in both the planted item and the one named
        item = {(rel, line): it for rel, line, it in items}
        assert len(g) == 1 and g[0] in decont.grams(decont.item_text(item[r["task"], r["line"]]))[0]
        assert g[0] in decont.grams(decont.item_text(item[planted[k]]))[0]
        assert r["ngram"] in dedup.norm_for_dedup(next(d for d in docs if d["id"] == k)["text"])
    assert [d["id"] for d in lines(tmp_path / "out1")] == [d["id"] for d in docs if d["id"] not in planted]
    tasks = report["tasks"]
    assert sum(t["items"] for t in tasks.values()) == len(items)
    assert sum(t["too_short"] for t in tasks.values()) == len(items) - len(long_enough)
    for file in {rel for rel, _ in planted.values()}:  # (a document may hold items of 2 files)
        assert tasks[file]["documents_removed"] >= sum(rel == file for rel, _ in planted.values())
        assert set(tasks[file]["items_found"]) >= {line for rel, line in planted.values() if rel == file}
    assert report["kept"] == len(docs) - len(planted)
    # what eval.py --contamination finds in the same documents is what the stage found
    assert decont.found_in(str(src), EVALS) == {f: t["items_found"] for f, t in tasks.items() if t["items_found"]}


def test_the_pipeline_decontaminates_between_dedup_and_tokenize(tmp_path):
    # tasks_dir set: dedup writes dedup_dir, decontaminate reads it into docs_dir, which the
    # tokenizer and the token shards are made from; a planted item goes, the rest stays
    import curate
    src = tmp_path / "raw"
    src.mkdir()
    docs = [d for name in ("en", "zh", "code") for d in stage.iter_documents(os.path.join(TINY, f"{name}.jsonl"), [])]
    item = json.loads(open(os.path.join(EVALS, "race.jsonl"), encoding="utf-8").readline())
    docs.insert(5, {**docs[4], "id": "planted", "text": docs[4]["text"][:3000] + "\n\n" + decont.item_text(item)})
    with open(src / "docs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    keys = [f"--source_dir={src}", f"--clean_dir={tmp_path}/clean", f"--dedup_dir={tmp_path}/dedup",
            f"--docs_dir={tmp_path}/docs", f"--tasks_dir={EVALS}", f"--tokenizer={tmp_path}/tok.tiktoken",
            "--tokenizer_vocab=512", f"--tokens_dir={tmp_path}/tokens", "--shard_mb=0.1", "--workers=1"]
    assert curate.main(["pipeline", os.path.join(ROOT, "config", "toy.py"), *keys]) == 0
    dedup_ids = [d["id"] for d in lines(tmp_path / "dedup")]
    assert "planted" in dedup_ids
    assert [d["id"] for d in lines(tmp_path / "docs")] == [i for i in dedup_ids if i != "planted"]
    [r] = lines(tmp_path / "docs" / "removed")
    assert (r["id"], r["task"], r["line"]) == ("planted", "race.jsonl", 1)
    assert os.path.exists(tmp_path / "tokens" / "manifest.json")
    # without dedup_dir, one line that says so
    from config import ConfigError
    cfg, _ = curate.load_config([os.path.join(ROOT, "config", "toy.py"), f"--tasks_dir={EVALS}", "--clean_dir=x"])
    with pytest.raises(ConfigError, match="set dedup_dir too"):
        curate.stages(cfg, "dedup")


def test_bad_input_is_one_line_naming_it(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(stage.DataError, match=f"^{empty}: no documents found"):
        decont.found_in(str(empty), EVALS)  # not "every item clean"
    with pytest.raises(stage.DataError, match=f"^{empty}: no task files"):
        decont.found_in(EVALS, str(empty))
    bad = tmp_path / "tasks"
    bad.mkdir()
    (bad / "t.jsonl").write_text('{"question": "fine"}\n{"question": broken\n', encoding="utf-8")
    with pytest.raises(stage.DataError, match=f"^{bad}/t.jsonl, line 2: not JSON"):
        decont.build_index(str(bad), str(tmp_path / "index"))


def test_a_document_holds_an_item_when_one_window_holds_most_of_its_tokens_in_order(tmp_path):
    # the reference: each cover worked by hand from the token counts of the parts copied
    q = ("A train leaves the station at nine and travels sixty miles every hour for three hours "
         "before it stops; how far has it gone when it stops at noon?")
    items = [{"question": q, "answer": "It has gone one hundred and eighty miles"},
             {"question": "“学而时习之，不亦说乎”这句话出自哪部典籍？它说的是怎样的学习态度？",
              "A": "《论语》，温故知新", "B": "《孟子》，循序渐进", "C": "《大学》，格物致知", "D": "《中庸》，博学笃行"},
             {"prompt": "def add(a, b):\n    \"\"\"Return the sum of two integers a and b.\"\"\"\n",
              "canonical_solution": "    return a + b\n",
              "test": "def check(candidate):\n" + "".join(f"    assert candidate({i}0, {i}1) == {2 * i}1\n" for i in range(1, 9))}]
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "t.jsonl").write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
    decont.build_index(str(tasks), str(tmp_path / "index"))
    index = decont.Index(str(tmp_path / "index"))
    n_tok = lambda text: len(decont.tokens(dedup.norm_for_dedup(text))[0])
    host = next(stage.iter_documents(os.path.join(TINY, "en.jsonl"), []))["text"][:1500]

    def cover(text, o):
        h, s, _, tok = decont.grams(text)
        hits = index.candidates(h, s)
        return index.cover(o, tok[0], hits[o]) if o in hits else None

    # an edited copy: two words replaced, far apart, inside a longer text: all the rest is held
    n = n_tok(decont.item_text(items[0]))
    words = q.split(" ")
    words[3], words[20] = "zebra", "quagga"
    copy = host[:700] + "\n" + " ".join(words).upper() + "\nIt has gone one hundred and eighty miles\n" + host[700:]
    c, f, touched = cover(copy, 0)
    assert (c, touched) == ((n - 2) / n, 2) and f == c
    assert decont.Index.found(index, copy)[0] == [("t.jsonl", 1)]
    # a quotation of the Chinese item alone, in its classic: a candidate, not the item
    n = n_tok(decont.item_text(items[1]))
    quote = "子曰：“学而时习之，不亦说乎？有朋自远方来，不亦乐乎？人不知而不愠，不亦君子乎？”"
    c, f, touched = cover(quote, 1)
    assert (c, touched) == (n_tok("学而时习之，不亦说乎") / n, 1)
    assert c < decont.COVER and index.found(quote)[0] == []
    # the item itself, reformatted as exam pages print it, a character changed: found
    page = ("练习：“学而时习之，不亦说乎”这句话出自哪本典籍？它说的是怎样的学习态度？\n"
            "Ａ．《论语》，温故知新 Ｂ．《孟子》，循序渐进\nＣ．《大学》，格物致知 Ｄ．《中庸》，博学笃行")
    assert index.found(page)[0] == [("t.jsonl", 2)]
    # a prompt and its solution without the tests: a small share of the item, but both fields whole
    n, p = n_tok(decont.item_text(items[2])), n_tok(items[2]["prompt"] + items[2]["canonical_solution"])
    code = host[:300] + "\n" + items[2]["prompt"].replace("    ", "\t") + items[2]["canonical_solution"] + "\n" + host[300:]
    c, f, touched = cover(code, 2)
    assert (c, f, touched) == (p / n, 1.0, 2) and c < decont.COVER
    assert index.found(code)[0] == [("t.jsonl", 3)]
    assert index.found(code, fields=2)[0] == []  # without the fields rule, it is missed
    # a text that shares one n-gram with an item, by chance: a candidate, far from the item
    chance = host[:500] + " the train leaves the station at nine and travels on " + host[500:]
    c, _, touched = cover(chance, 0)
    n = n_tok(decont.item_text(items[0]))
    assert n_tok("train leaves the station at nine and travels") / n <= c < decont.COVER and touched == 1
    assert index.found(chance)[0] == []
