"""What a stage (clean, dedup, tokenize, train's data preparation), train-tokenizer and
fetch-demo may write: a new, empty or their own folder, never their input nor a folder of the
user's (refused in one line naming it, the user's files byte-identical); one command at a time on
an output (a second is refused naming the first, the workers of one command still share it); a
full disk said in one line, and a rerun that resumes to the same bytes; symbolic links in an
input followed and each listed in problems.log."""
import errno, json, os, re, resource, signal, socket, subprocess, sys, time

import pytest

import curate
import data
import kept
import stage
import train
from config import load_config, run_command
from helpers import ROOT, TINY, sha, small_args

CFG = os.path.join(ROOT, "config", "toy.py")


def tree(root):
    """Every file and link under root, not followed: {path: sha256, or '-> target' for a link}."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = "-> " + os.readlink(p)
            elif name in files:
                out[os.path.relpath(p, root)] = sha(p)
    return out


def outputs(folder):
    """sha256 of every file of an output folder but timing.json (seconds), the path of the tmp
    tree it sits in written as ROOT: the same bytes, wherever the folder is."""
    root = os.path.dirname(os.path.dirname(str(folder))).encode()
    return {os.path.relpath(os.path.join(d, f), folder):
            open(os.path.join(d, f), "rb").read().replace(root, b"ROOT")
            for d, _, fs in os.walk(folder) for f in fs if f != "timing.json"}


def corpus(folder, lines=6):
    """A small real corpus: the first lines of data/tiny's three files."""
    os.makedirs(folder, exist_ok=True)
    for name in ("en", "zh", "code"):
        with open(os.path.join(TINY, name + ".jsonl"), "rb") as f, \
                open(os.path.join(folder, name + ".jsonl"), "wb") as g:
            g.writelines(f.readline() for _ in range(lines))
    return str(folder)


def one_line(main, argv, capsys, monkeypatch):
    """What `python X.py argv` prints when it fails: exactly one line, `error: ...`, status 2."""
    monkeypatch.setattr(sys, "argv", ["x.py", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_command(main, stage.DataError)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


# -----------------------------------------------------------------------------
# 1. an output folder is new, empty or the stage's own; never the input nor the user's

def test_clean_into_its_own_source_is_refused(tmp_path, capsys, monkeypatch):
    raw = corpus(tmp_path / "raw")
    before = tree(tmp_path)
    err = one_line(curate.main, ["clean", CFG, f"--source_dir={raw}", f"--clean_dir={raw}/"], capsys, monkeypatch)
    assert err == f"error: {raw}: clean's output would replace its input {raw} (the same folder); choose another clean_dir\n"
    # a link to the input is the input; a clean_dir inside it would be read by the next run
    os.symlink(raw, tmp_path / "alias")
    with pytest.raises(stage.DataError, match=f"^{tmp_path}/alias: clean's output would replace its input {raw} \\(the same folder\\)"):
        curate.clean_corpus(raw, str(tmp_path / "alias"))
    with pytest.raises(stage.DataError, match=f"^{raw}/clean: inside clean's input {raw}, whose next run"):
        curate.clean_corpus(raw, f"{raw}/clean")
    os.remove(tmp_path / "alias")
    assert tree(tmp_path) == before


def test_tokenize_into_the_folder_around_its_input_is_refused(tmp_path, capsys, monkeypatch):
    mine = tmp_path / "data" / "mine"
    raw = corpus(mine / "raw")
    (mine / "notes.txt").write_text("my notes, not a document of the corpus\n")
    before = tree(tmp_path)
    err = one_line(data.main, ["tokenize", CFG, f"--docs_dir={raw}", f"--tokens_dir={mine}", "--tokenizer_vocab=300"],
                   capsys, monkeypatch)
    assert err == f"error: {mine}: holds tokenize's input {raw}, which its output would replace; choose another tokens_dir\n"
    # beside the input, a folder of the user's: named with what it holds
    (mine / "old").mkdir()
    (mine / "old" / "keep.bin").write_bytes(b"\x00" * 10)
    (mine / "old" / "sub").mkdir()
    before = tree(tmp_path)
    err = one_line(data.main, ["tokenize", CFG, f"--docs_dir={raw}", f"--tokens_dir={mine / 'old'}",
                               "--tokenizer_vocab=300"], capsys, monkeypatch)
    assert err == (f"error: {mine / 'old'}: holds 1 file and 1 folder that no nano360 stage wrote "
                   "(sub/, keep.bin); choose an empty or new tokens_dir\n")
    assert tree(tmp_path) == before and not os.path.exists(mine / ".tmp_old")


def test_train_never_prepares_its_data_in_a_previous_runs_out_dir(tmp_path):
    run1 = tmp_path / "out" / "run1"  # what a run leaves: checkpoints, metrics, its lock
    (run1 / "ckpt_0000002").mkdir(parents=True)
    (run1 / "ckpt_0000002" / "meta.json").write_text('{"step": 2}')
    (run1 / "ckpt_0000002" / "DONE").write_text(json.dumps({"meta.json": sha(run1 / "ckpt_0000002" / "meta.json")}))
    (run1 / "metrics.jsonl").write_text('{"step": 1, "loss": 8.3}\n')
    (run1 / "LOCK").write_text("")
    before = tree(run1)
    with pytest.raises(stage.DataError) as e:
        train.main(small_args(str(run1), str(tmp_path / "out" / "run2"), "--max_steps=1"))
    assert str(e.value) == (f"{run1}: holds 1 file and 1 folder that no nano360 stage wrote "
                            "(ckpt_0000002/, metrics.jsonl); choose an empty or new tokens_dir")
    assert tree(run1) == before and not os.path.exists(tmp_path / "out" / ".tmp_run1")
    # a checkpoint (or another stage's complete output) is not a tokens_dir either
    with pytest.raises(stage.DataError, match=f"^{run1}/ckpt_0000002: holds train.py's complete output .*not tokenize's"):
        data.tokenize(load_config([f"--tokens_dir={run1}/ckpt_0000002", f"--docs_dir={TINY}"])[0])
    assert tree(run1) == before


def test_an_output_of_another_stage_is_refused_and_older_outputs_are_still_complete(tmp_path, capsys):
    raw = corpus(tmp_path / "raw")
    curate.clean_corpus(raw, str(tmp_path / "clean"), workers=1)
    assert json.load(open(tmp_path / "clean" / "DONE")) == {"stage": "clean"}  # who wrote it
    before = tree(tmp_path)
    # dedup's docs_dir typed as its clean_dir
    with pytest.raises(stage.DataError, match=f"^{tmp_path}/clean: holds clean's complete output .*not dedup's; "
                                              r"choose an empty or new docs_dir \(dedup_dir when tasks_dir is set\)$"):
        curate.main(["dedup", CFG, f"--clean_dir={tmp_path}/clean", f"--docs_dir={tmp_path}/clean"])
    assert tree(tmp_path) == before
    # an older nano360's DONE is empty: its plan.json tells the stage, and it is complete as before
    open(tmp_path / "clean" / "DONE", "w").close()
    assert stage.written_by(str(tmp_path / "clean")) == "clean"
    capsys.readouterr()
    assert curate.clean_corpus(raw, str(tmp_path / "clean"))["kept"] > 0
    assert "is complete (DONE)" in capsys.readouterr().out


def test_train_tokenizer_and_fetch_demo_never_replace_a_users_file(tmp_path):
    cfg, _ = load_config([f"--docs_dir={corpus(tmp_path / 'raw')}", f"--tokenizer={tmp_path / 'tok.tiktoken'}",
                          "--tokenizer_vocab=300", "--tokenizer_sample=100000"])
    (tmp_path / "tok.tiktoken.json").write_text('{"my": "settings"}')
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.jsonl").write_text('{"text": "a document of mine"}\n')
    before = tree(tmp_path)
    with pytest.raises(stage.DataError, match=f"^{tmp_path}/tok.tiktoken.json: train-tokenizer did not write it"):
        curate.stages(cfg, "train-tokenizer")
    with pytest.raises(stage.DataError, match=f"^{tmp_path}/demo: holds 1 file that no nano360 stage wrote "
                                              r"\(mine.jsonl\); choose an empty or new --out folder$"):
        curate.fetch_demo(str(tmp_path / "demo"))  # before any download
    assert tree(tmp_path) == before
    os.remove(tmp_path / "tok.tiktoken.json")  # what a killed train-tokenizer left is its own to replace
    (tmp_path / "tok.tiktoken.report.json").write_text('{"characters_per_token": {}}')
    curate.stages(cfg, "train-tokenizer")
    assert "special_tokens" in json.load(open(tmp_path / "tok.tiktoken.json"))


# -----------------------------------------------------------------------------
# 2. one command at a time on an output; the workers of one command share it

def test_a_second_command_on_the_same_output_is_refused_naming_the_first(tmp_path, monkeypatch):
    raw = corpus(tmp_path / "raw", lines=40)
    first = subprocess.Popen([sys.executable, "curate.py", "clean", CFG, f"--source_dir={raw}",
                              f"--clean_dir={tmp_path}/clean", "--shard_mb=0.01", "--workers=1"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    lock, work, t0 = tmp_path / ".tmp_clean" / "LOCK", tmp_path / ".tmp_clean" / "work" / "clean", time.time()
    try:
        while not (work.exists() and any((work / t / "DONE").exists() for t in os.listdir(work))):
            assert first.poll() is None and time.time() - t0 < 60, first.stderr.read()
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)  # caught mid-way, and held there
        holder = json.load(open(lock))
        assert holder["pid"] == first.pid and not (tmp_path / "clean").exists()
        before = tree(tmp_path)
        who = f"pid {first.pid} on {socket.gethostname()} since {holder['since']}"
        with pytest.raises(stage.DataError) as e:
            curate.clean_corpus(raw, str(tmp_path / "clean"), shard_mb=0.01, workers=1)
        assert str(e.value) == (f"{tmp_path}/clean: clean is running on it in another command ({who}; {lock}): wait "
                                f"for it to end, or choose another clean_dir; if none is running, delete {lock}")
        # a rank of another command (torchrun's) is refused too, instead of joining the first's plan
        monkeypatch.setenv("RANK", "1")
        monkeypatch.setenv("WORLD_SIZE", "2")
        with pytest.raises(stage.DataError, match=f"clean is running on it in another command \\({who}"):
            curate.clean_corpus(raw, str(tmp_path / "clean"), shard_mb=0.01, rank=1, world=2)
        assert tree(tmp_path) == before
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert not (tmp_path / "clean" / "LOCK").exists() and not (tmp_path / ".tmp_clean").exists()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    curate.clean_corpus(raw, str(tmp_path / "reference"), shard_mb=0.01, workers=1)
    assert outputs(tmp_path / "clean") == outputs(tmp_path / "reference")


def test_a_lock_left_by_a_command_that_died_is_taken_over(tmp_path, capsys):
    raw = corpus(tmp_path / "raw")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".tmp_clean").mkdir()
    holder = dict(host=socket.gethostname(), pid=int(dead.stdout), since="2026-01-01 00:00:00", command="x")
    (tmp_path / ".tmp_clean" / "LOCK").write_text(json.dumps(holder))
    curate.clean_corpus(raw, str(tmp_path / "clean"), workers=1)
    assert (f"{tmp_path}/.tmp_clean/LOCK: taking over the lock of a command that is gone "
            f"(pid {dead.stdout.strip()} on {socket.gethostname()} since 2026-01-01 00:00:00)") in capsys.readouterr().out
    assert stage.is_done(str(tmp_path / "clean")) and sorted(os.listdir(tmp_path)) == ["clean", "raw"]


# -----------------------------------------------------------------------------
# 3. a full disk: one line naming the folder and the free space; a rerun resumes

def test_a_full_disk_in_clean_is_one_line_and_a_rerun_gives_the_same_bytes(tmp_path, monkeypatch):
    raw = corpus(tmp_path / "raw", lines=30)
    before = tree(tmp_path / "raw")
    write, calls = kept.DocWriter.write, []

    def full(self, doc):  # the disk fills up in the fourth task
        calls.append(self.folder)  # the task's folder
        if len(set(calls)) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(self.folder, "docs_0000.jsonl"))
        write(self, doc)
    monkeypatch.setattr(kept.DocWriter, "write", full)
    with pytest.raises(stage.DataError) as e:
        curate.clean_corpus(raw, str(tmp_path / "clean"), shard_mb=0.01, workers=1)
    work = tmp_path / ".tmp_clean" / "work" / "clean"
    finished = sum(os.path.exists(work / t / "DONE") for t in os.listdir(work))
    assert finished >= 3 and not (tmp_path / "clean").exists()  # (tasks with no line start in them write nothing)
    assert re.fullmatch(rf"{tmp_path}/clean: writing it failed: No space left on device \([\d.]+ GiB free on that "
                        rf"disk; {finished} finished tasks kept in {tmp_path}/.tmp_clean\): make room, then rerun to "
                        "resume", str(e.value)), str(e.value)
    monkeypatch.undo()
    curate.clean_corpus(raw, str(tmp_path / "clean"), shard_mb=0.01, workers=1)
    curate.clean_corpus(raw, str(tmp_path / "reference"), shard_mb=0.01, workers=1)
    assert outputs(tmp_path / "clean") == outputs(tmp_path / "reference")
    assert tree(tmp_path / "raw") == before


def test_a_file_size_limit_in_tokenize_is_one_line_and_a_rerun_resumes(tmp_path):
    # a real EFBIG: the command runs under RLIMIT_FSIZE, SIGXFSZ ignored (so the write fails instead)
    raw = corpus(tmp_path / "raw", lines=40)
    before = tree(tmp_path / "raw")

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    def tokenize(out, **kw):
        return subprocess.run([sys.executable, "data.py", "tokenize", CFG, f"--docs_dir={raw}", f"--tokens_dir={out}",
                               "--tokenizer_vocab=300", "--shard_mb=0.05", "--workers=1"], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, timeout=300, **kw)
    r = tokenize(tmp_path / "tokens", preexec_fn=limited)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-3000:]
    assert re.fullmatch(rf"error: {tmp_path}/tokens: writing it failed: File too large \([\d.]+ GiB free on that disk; "
                        rf"0 finished tasks kept in {tmp_path}/.tmp_tokens\): make room, then rerun to resume\n", r.stderr)
    r = tokenize(tmp_path / "tokens")
    assert r.returncode == 0 and "tokenize: resuming" in r.stdout, r.stderr[-3000:]
    assert tokenize(tmp_path / "reference").returncode == 0
    assert outputs(tmp_path / "tokens") == outputs(tmp_path / "reference")
    assert tree(tmp_path / "raw") == before


# -----------------------------------------------------------------------------
# 4. symbolic links in an input: followed, each listed in problems.log

def test_symbolic_links_in_the_input_are_followed_and_each_listed(tmp_path):
    raw, outside = tmp_path / "raw", tmp_path / "elsewhere"
    corpus(raw, lines=3)
    corpus(outside / "books", lines=2)
    os.symlink(outside / "books", raw / "more")  # a folder outside the input
    os.replace(outside / "books" / "en.jsonl", outside / "extra.jsonl")
    os.symlink(outside / "extra.jsonl", raw / "linked.jsonl")  # a file outside it
    os.symlink("en.jsonl", raw / "again.jsonl")  # a second name for a file of the input
    (raw / "sub").mkdir()
    os.symlink("..", raw / "sub" / "loop")  # a loop
    os.symlink("nowhere.jsonl", raw / "gone.jsonl")  # broken
    before = tree(tmp_path)
    report = curate.clean_corpus(str(raw), str(tmp_path / "clean"), workers=1)
    real = os.path.realpath(raw)
    links = [f"{raw}/more: a symbolic link to {outside}/books, outside the input: followed",
             f"{raw}/again.jsonl: a symbolic link to en.jsonl: not read ({real}/en.jsonl is read already)",
             f"{raw}/gone.jsonl: a symbolic link to nowhere.jsonl: broken, skipped",
             f"{raw}/linked.jsonl: a symbolic link to {outside}/extra.jsonl, outside the input: followed",
             f"{raw}/sub/loop: a symbolic link to ..: not read ({real} is read already)"]
    assert open(tmp_path / "clean" / "problems.log").read().splitlines() == links
    assert report["problems"] == 5
    documents = {s: r["documents"] for s, r in report["sources"].items()}
    # raw's 3 of each source, and 2 of each outside (more/, linked.jsonl); en.jsonl once, not again as again.jsonl
    assert documents == dict(code=5, en=5, zh=5)
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("clean" + os.sep)} == before
    # train-tokenizer's sample reads the input the same way, and lists the links with its problems
    problems = []
    assert len(list(stage.iter_documents(str(raw), problems))) == 15 and problems == links
