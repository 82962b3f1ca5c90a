import gzip, json, os, random, subprocess, sys

import numpy as np
import pytest
import torch

import data
import stage
import tokenizer
import train
from config import ConfigError, load_config
from model import doc_ids
from helpers import ROOT, small_args, tokenize_tiny


def test_tokenizer_round_trip(tiny_data):
    enc = tokenizer.tokenizer_of(tiny_data, data.load_manifest(tiny_data))
    samples = ["It is a truth universally acknowledged, that a single man in possession of a good fortune",
               "子曰：“学而时习之，不亦说乎？有朋自远方来，不亦乐乎？”",
               "def f(x):\n\treturn {'a': x ** 2, \"b\": [1, 2, 3]}  # ünïcödé\r\n",
               "emoji 🦜🚀, control \x00\x07\x1b[0m, mixed 中文 and English 12345678901234567890"]
    rng = random.Random(0)  # arbitrary code points, surrogates excluded (not encodable text)
    samples.append("".join(chr(rng.choice([rng.randrange(0x20, 0xD800), rng.randrange(0xE000, 0x110000)])) for _ in range(500)))
    for text in samples:
        ids = enc.encode_ordinary(text)
        assert enc.decode(ids) == text
        assert max(ids) < 512 + len(tokenizer.SPECIAL_TOKENS)
    raw = random.Random(1).randbytes(2000)  # arbitrary bytes, mostly invalid UTF-8
    assert enc.decode_bytes(enc._encode_bytes(raw)) == raw
    for b in range(256):  # byte-level: every single byte is a token, so nothing is ever unknown
        assert enc.decode_single_token_bytes(enc.encode_single_token(bytes([b]))) == bytes([b])
    # digits are split one by one, as MAP-Neo does
    assert [enc.decode([t]) for t in enc.encode_ordinary("2024")] == ["2", "0", "2", "4"]
    assert enc.eot_token == 512 and enc.n_vocab == 512 + len(tokenizer.SPECIAL_TOKENS)
    assert enc.encode(tokenizer.EOT, allowed_special="all") == [enc.eot_token]


def test_tokenizer_file_is_plain_tiktoken(tiny_data):
    # the ranks file is the standard .tiktoken format that tiktoken's own loader reads
    from tiktoken.load import load_tiktoken_bpe
    path = os.path.join(tiny_data, "tokenizer.tiktoken")
    ranks = load_tiktoken_bpe(path)
    assert len(ranks) == 512 and tokenizer.load_tokenizer(path)._mergeable_ranks == ranks


def test_prepare_writes_manifest_and_splits(tiny_data):
    m = data.load_manifest(tiny_data)
    assert set(m["sources"]) == {"en", "zh", "code"} and m["dtype"] == "uint16"
    for source, s in m["sources"].items():
        train_tokens = np.concatenate([data.read_shard(os.path.join(tiny_data, x["file"])) for x in m["shards"]
                                       if x["source"] == source and x["split"] == "train"])
        val_tokens = np.concatenate([data.read_shard(os.path.join(tiny_data, x["file"])) for x in m["shards"]
                                     if x["source"] == source and x["split"] == "val"])
        assert len(train_tokens) == s["train_tokens"] and len(val_tokens) == s["val_tokens"]
        assert abs(s["val_tokens"] / (s["train_tokens"] + s["val_tokens"]) - 0.05) < 0.001
        # every document ends with the end-of-text token
        docs = [json.loads(l)["text"] for l in open(os.path.join(ROOT, "data", "tiny", f"{source}.jsonl"))]
        all_tokens = np.concatenate([train_tokens, val_tokens])
        assert (all_tokens == m["eot"]).sum() == len(docs) == s["documents"] and all_tokens[-1] == m["eot"]


def test_documents_sources_and_bad_lines(tmp_path):
    (tmp_path / "web.jsonl").write_text('{"text": "one"}\nnot json\n{"txt": "no text"}\n\n{"text": "two", "source": "wiki"}\n')
    with gzip.open(tmp_path / "gz.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_bytes(b"caf\xe9 latin-1")
    problems = []
    docs = [(d["source"], d["text"]) for d in stage.iter_documents(str(tmp_path), problems)]
    assert sorted(docs) == [("books", "caf\ufffd latin-1"), ("gz", "zipped"), ("web", "one"), ("wiki", "two")]
    assert problems == [f"{tmp_path}/books/a.txt: invalid UTF-8, bad bytes replaced by U+FFFD",
                        f"{tmp_path}/web.jsonl:2: not JSON (Expecting value)",
                        f"{tmp_path}/web.jsonl:3: no string field 'text'"]


def test_shard_round_trip_and_errors(tmp_path):
    for dtype in (np.uint16, np.uint32):
        tokens = np.arange(1000, dtype=dtype) * (7 if dtype == np.uint16 else 70001)
        path = str(tmp_path / f"s{dtype.__name__}.bin")
        data.write_shard(path, tokens)
        back = data.read_shard(path)
        assert back.dtype.itemsize == tokens.itemsize and np.array_equal(back, tokens)
        raw = open(path, "rb").read()
        assert np.frombuffer(raw[:32], "<i8").tolist() == [data.MAGIC, data.VERSION, tokens.itemsize, 1000]
    truncated = str(tmp_path / "truncated.bin")
    open(truncated, "wb").write(raw[:-5])
    with pytest.raises(stage.DataError, match=f"{truncated}: truncated or corrupt.*1,000 tokens"):
        data.read_shard(truncated)
    wrong = str(tmp_path / "wrong.bin")
    open(wrong, "wb").write(b"\x00" * 40)
    with pytest.raises(stage.DataError, match=f"{wrong}: not a nano360 token shard"):
        data.read_shard(wrong)


def copy_data(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return str(dst)


def test_corrupted_shard_and_manifest_are_named(tiny_data, tmp_path):
    d = copy_data(tiny_data, tmp_path / "d")
    shard = os.path.join(d, "train_en_0000.bin")
    raw = bytearray(open(shard, "rb").read())
    raw[100] ^= 0xFF  # one flipped byte: the size is right, the content is not
    open(shard, "wb").write(raw)
    data.load_manifest(d, hash_shards=False)  # header and size still fine
    with pytest.raises(stage.DataError, match=f"{shard}: sha256 .* does not match {d}/manifest.json"):
        data.load_manifest(d)
    open(os.path.join(d, "manifest.json"), "w").write('{"shards": [\n  oops\n]}')
    with pytest.raises(stage.DataError, match=f"{d}/manifest.json:2: not valid JSON"):
        data.load_manifest(d)
    with pytest.raises(stage.DataError, match="no manifest .*data.py tokenize"):
        data.load_manifest(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 65537])
def test_permute_is_a_bijection(n):
    for seed, epoch in ((0, 0), (1, 0), (1, 5)):
        p = data.permute(np.arange(n), n, seed, epoch)
        assert sorted(p.tolist()) == list(range(n))
    if n >= 1000:  # and a shuffle: few fixed points, seed and epoch matter
        p = data.permute(np.arange(n), n, 0, 0)
        assert (p == np.arange(n)).mean() < 0.01
        assert (p != data.permute(np.arange(n), n, 1, 0)).mean() > 0.99
        assert (p != data.permute(np.arange(n), n, 0, 1)).mean() > 0.99


def test_batches_order(tiny_data):
    b = data.Batches(tiny_data, seq_len=32, global_batch=8, seed=1)
    again = data.Batches(tiny_data, seq_len=32, global_batch=8, seed=1)
    other = data.Batches(tiny_data, seq_len=32, global_batch=8, seed=2)
    assert torch.equal(b.batch(5), again.batch(5))
    assert not torch.equal(b.batch(5), other.batch(5))
    # one epoch of sample positions visits every sample exactly once
    steps = b.n // 8 + 1
    seen = np.concatenate([b.sample_ids(s) for s in range(2 * steps + 1)])
    epoch0, epoch1 = seen[:b.n], seen[b.n:2 * b.n]
    assert sorted(epoch0.tolist()) == sorted(epoch1.tolist()) == list(range(b.n))
    assert (epoch0 != epoch1).mean() > 0.99  # each epoch in a new order
    # ranks split each global batch into disjoint shares whose union is the 1-rank batch
    for step in (0, 3, steps + 2):
        shares = [b.sample_ids(step, r, 4) for r in range(4)]
        assert np.array_equal(np.concatenate(shares), b.sample_ids(step, 0, 1))
        assert len(set(np.concatenate(shares).tolist())) == 8
    with pytest.raises(ValueError, match="cannot be split over 3 ranks"):
        b.sample_ids(0, 0, 3)
    # the tokens of a sample are the shard's bytes at the sample's offset, read independently
    ids = b.sample_ids(2)
    shard, start = b.locate(ids)
    for row, s, a in zip(b.batch(2), shard, start):
        path = os.path.join(tiny_data, b.files[s])
        raw = np.fromfile(path, dtype="<u2", offset=32 + 2 * int(a), count=33)
        assert row.tolist() == raw.tolist()


def test_show_prints_the_text_of_a_step(tiny_data, tmp_path, capsys):
    args = small_args(tiny_data, tmp_path / "out")
    assert data.main(["show", "--step", "3"] + args) == 0
    out = capsys.readouterr().out
    cfg, _ = load_config(args)
    b = data.Batches(tiny_data, cfg.seq_len, cfg.global_batch_size or cfg.batch_size, cfg.seed)
    enc = tokenizer.tokenizer_of(tiny_data, b.manifest)
    for row in b.batch(3):
        assert enc.decode(row.tolist()) in out
    assert out.count("=== step 3 · sequence") == cfg.batch_size


def test_show_ckpt_prints_the_last_step_before_the_save(tiny_data, tmp_path, capsys):
    args = small_args(tiny_data, tmp_path / "out", "--max_steps=3", "--global_batch_size=8")
    train.main(args)
    capsys.readouterr()
    assert data.main(["show", "--ckpt", str(tmp_path / "out" / "ckpt_0000003")]) == 0
    out = capsys.readouterr().out
    b = data.Batches(tiny_data, 32, 8, 1337)
    enc = tokenizer.tokenizer_of(tiny_data, b.manifest)
    assert out.count("=== step 2 · sequence") == 8
    assert all(enc.decode(row.tolist()) in out for row in b.batch(2))
    with pytest.raises(ConfigError, match="checkpoint not found"):
        data.main(["show", "--ckpt", str(tmp_path / "nope")])


def test_prepare_warns_on_a_short_vocabulary_and_batches_refuse_tiny_data(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.jsonl").write_text('{"text": "hello world, hello there"}\n')
    tokenize_tiny(str(tmp_path / "tok"), 4096, 0.05, docs=str(tmp_path / "raw"))
    assert "the BPE stopped at" in capsys.readouterr().err
    with pytest.raises(stage.DataError, match=f"{tmp_path / 'tok'}: no train shard holds seq_len \\+ 1 = 257 tokens"):
        data.Batches(str(tmp_path / "tok"), 256, 8, 0)
    with pytest.raises(stage.DataError, match="no documents found"):
        tokenize_tiny(str(tmp_path / "x"), 300, 0.05, docs=str(tmp_path / "tok"))  # shards are no documents


def test_doc_ids_split_at_end_of_text():
    # the end-of-text token (9) closes a document and opens the next id
    x = torch.tensor([[1, 2, 9, 3, 9, 9, 4], [9, 5, 6, 7, 8, 1, 2]])
    assert doc_ids(x, 9).tolist() == [[0, 0, 1, 1, 2, 3, 3], [1, 1, 1, 1, 1, 1, 1]]


def test_mixture_proportions_phases_and_upsampling(tiny_data):
    mixture = [(0, {"en": 2, "zh": 1, "code": 1}), (5, {"zh": 1})]
    b = data.Batches(tiny_data, 32, 64, seed=3, hash_shards=False, mixture=mixture)
    source = lambda ids: [b.sources[s] for s in b.locate(ids)[0]]
    first = source(np.concatenate([b.sample_ids(s) for s in range(5)]))  # 320 samples of phase 1
    for name, share in (("en", 0.5), ("zh", 0.25), ("code", 0.25)):
        sd = (320 * share * (1 - share)) ** 0.5
        assert abs(first.count(name) - 320 * share) < 4 * sd, (name, first.count(name))
    assert set(source(np.concatenate([b.sample_ids(s) for s in range(5, 9)]))) == {"zh"}  # the switch at step 5
    # zh alone from step 5 upsamples it: each epoch of zh visits every zh window exactly once
    lo, hi = b.span["zh"]
    zh = [i for s in range(0, 200) for i in b.sample_ids(s) if lo <= i < hi]
    n = hi - lo
    assert len(zh) > 2 * n and sorted(zh[:n]) == list(range(lo, hi)) and sorted(zh[n:2 * n]) == list(range(lo, hi))
    assert b.epochs(200)["zh"] > 2 and b.epochs(200)["en"] < 1
    # a pure function of (manifest, mixture, seed): a new instance, and 2 ranks, give the same samples
    again = data.Batches(tiny_data, 32, 64, seed=3, hash_shards=False, mixture=mixture)
    assert (again.sample_ids(7) == b.sample_ids(7)).all()
    assert (np.concatenate([b.sample_ids(6, r, 2) for r in range(2)]) == b.sample_ids(6)).all()
    with pytest.raises(stage.DataError, match=r"unknown: \['web'\]"):
        data.Batches(tiny_data, 32, 64, seed=3, hash_shards=False, mixture=[(0, {"web": 1})])


def unfim(tokens, fim_ids):
    """The document a FIM piece came from (PSM or SPM), for checking that FIM loses nothing."""
    pre, mid, suf = fim_ids
    t = list(tokens)
    if not t or t[0] != pre:
        return np.asarray(t)
    if t[1] == suf:  # SPM: <pre> <suf> suffix <mid> prefix+middle
        m = t.index(mid)
        return np.asarray(t[m + 1:] + t[2:m])
    s, m = t.index(suf), t.index(mid)
    return np.asarray(t[1:s] + t[m + 1:] + t[s + 1:m])


def test_fim_is_deterministic_and_invertible(tiny_data):
    b = data.Batches(tiny_data, 64, 32, seed=1, hash_shards=False, fim_rate=1.0, fim_spm_rate=0.5)
    plain = data.Batches(tiny_data, 64, 32, seed=1, hash_shards=False)
    ids = np.concatenate([b.sample_ids(s) for s in range(30)])
    code = ids[[b.sources[s] == "code" for s in b.locate(ids)[0]]]
    assert len(code) > 20
    pre, mid, suf = b.fim_ids
    spm = psm = 0
    for i in code:
        got, orig = b.tokens(np.array([i]))[0], plain.tokens(np.array([i]))[0]
        assert (got == b.tokens(np.array([i]))[0]).all()  # deterministic
        pieces, originals = np.split(got, np.flatnonzero(got == b.eot)), np.split(orig, np.flatnonzero(orig == b.eot))
        for p, o in list(zip(pieces, originals))[:-1]:  # every piece but the last (cut at the window's end)
            p, o = p[p != b.eot], o[o != b.eot]
            assert (unfim(p, b.fim_ids) == o).all()
            if len(o) >= 2:
                assert p[0] == pre
                spm, psm = spm + (p[1] == suf), psm + (p[1] != suf)
    assert spm > 0 and psm > 0  # both orders occur at fim_spm_rate 0.5
    # a phase may set its own rate (CrystalCoder: 0.9, then 0.3): here none from step 10 on
    phased = data.Batches(tiny_data, 64, 32, seed=1, hash_shards=False, fim_rate=1.0,
                          mixture=[(0, {"code": 1}), (10, {"code": 1}, {"fim_rate": 0.0})])
    assert (phased.tokens(code[:5], step=3) == b.tokens(code[:5])).all()
    assert (phased.tokens(code[:5], step=12) == plain.tokens(code[:5])).all()
    # code only: the other sources come out untouched
    other = ids[[b.sources[s] != "code" for s in b.locate(ids)[0]]]
    assert (b.tokens(other) == plain.tokens(other)).all()


def test_a_folder_is_written_whole_with_done_last(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("the previous complete version")
    tmp = stage.tmp_dir(str(final))
    assert os.path.basename(tmp) == ".tmp_out" and os.listdir(tmp) == []
    (open(os.path.join(tmp, "new.txt"), "w")).write("half written")
    # a crash here leaves the final folder as it was, and no DONE anywhere
    assert os.listdir(final) == ["old.txt"] and not stage.is_done(tmp)
    assert stage.tmp_dir(str(final), create=False) == tmp and os.listdir(tmp) == ["new.txt"]  # other ranks: the name only
    stage.commit_dir(tmp, str(final))
    assert sorted(os.listdir(final)) == ["DONE", "new.txt"] and not os.path.exists(tmp) and stage.is_done(str(final))
    assert stage.tmp_dir(str(final)) == tmp and os.listdir(tmp) == []  # a leftover is emptied before reuse


def test_tokenized_builds_a_folder_without_done_again(tmp_path, capsys):
    cfg, _ = load_config([f"--docs_dir={ROOT}/data/tiny/code.jsonl", f"--tokens_dir={tmp_path / 'tok'}",
                          "--tokenizer_vocab=300"])
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "manifest.json").write_text("{}")  # what a crash of older code could leave
    m = data.tokenized(cfg)
    assert "tokenizing" in capsys.readouterr().out and set(m["sources"]) == {"code"}
    assert stage.is_done(str(tmp_path / "tok")) and not os.path.exists(tmp_path / ".tmp_tok")
    data.tokenized(cfg)  # complete now: not tokenized again
    assert "tokenizing" not in capsys.readouterr().out


def test_command_line_errors_are_one_line():
    for cmd, expected in ((["data.py", "show", "--ckpt", "nope"], "error: checkpoint not found: nope\n"),
                          (["curate.py", "clean", "--clean_dirr=x"],
                           "error: --clean_dirr=x: unknown key 'clean_dirr' "
                           "(did you mean 'clean_dir'? `python train.py --help` lists every key)\n")):
        r = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True)
        assert (r.returncode, r.stderr) == (2, expected)
