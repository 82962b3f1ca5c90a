"""The corpus pipeline (clean, dedup, train-tokenizer, tokenize) on a simulated cluster: Slurm
array tasks as processes of this machine sharing one folder, with a 2-second lease
(NANO360_LEASE). A throttled array run one task at a time, workers that start 5 s apart, one
SIGKILLed mid-task and never restarted, rank 0 never started, one stopped (SIGSTOP) past its
lease and woken: every stage ends complete and byte-identical to one process's run, and every
worker exits by itself. (claims.py alone: test_claims.py.)"""
import glob, json, os, signal, subprocess, sys, time

import pytest

import curate
from helpers import ROOT
from test_pipeline import digests, keys

STAGES = ("clean", "dedup", "tokens")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The pipeline by one process, one worker: the bytes every cluster run must give."""
    d = tmp_path_factory.mktemp("one")
    assert curate.main(["pipeline", "config/toy.py", *keys(d, "--shard_mb=0.02", "--workers=1")]) == 0
    return {name: digests(d / name) for name in STAGES}


def worker(d, task, count, **more):
    """Array task `task` of `count` (ids from 0), one worker, in its own process group."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "NANO360_TASKS")}
    env.update(SLURM_ARRAY_TASK_COUNT=str(count), SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_ID=str(task),
               SLURM_ARRAY_JOB_ID="77", NANO360_LEASE="2", **more)
    return subprocess.Popen([sys.executable, "curate.py", "pipeline", "config/toy.py",
                             *keys(d, "--shard_mb=0.02", "--workers=1")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def ends(p, timeout=300):
    out = p.communicate(timeout=timeout)[0]
    assert p.returncode == 0, out[-3000:]
    return out


def same(d, reference):
    for name in STAGES:
        assert digests(d / name) == reference[name], name
        assert not glob.glob(str(d / name / "*.claim.*")) and not os.path.exists(d / name / "LOCK")
    assert not glob.glob(str(d / "tok.tiktoken.claim.*"))
    assert not glob.glob(str(d / ".tmp_*")) and not glob.glob(str(d / ".del_*"))  # no work left behind


def held_by(d, pid):
    """A task claim of pid's whose task is not committed (it is mid-task), or None."""
    for path in glob.glob(str(d / ".tmp_*" / "work" / "*" / "*.claim.*")):
        try:
            holder = json.load(open(path))
        except (OSError, ValueError):  # being written, or gone
            continue
        if holder.get("pid") == pid and not os.path.exists(path.rsplit(".claim.", 1)[0] + "/DONE"):
            return path
    return None


def wait_for(what, p=None, timeout=120):
    t0 = time.time()
    while not (got := what()):
        assert time.time() - t0 < timeout and (p is None or p.poll() is None), "never happened"
        time.sleep(0.002)
    return got


def test_a_throttled_array_runs_one_task_at_a_time(reference, tmp_path):
    # --array=0-3%1: each task must end by itself before the next starts; the first does it all
    outs = [ends(worker(tmp_path, i, 4)) for i in range(4)]
    same(tmp_path, reference)
    assert all("is complete" in out for out in outs[1:])


def test_workers_that_start_5_s_apart_and_rank_0_never_started(reference, tmp_path):
    # array tasks 1, 2 and 3 of 4, 5 s apart; task 0 never runs
    procs = []
    for i in (1, 2, 3):
        procs.append(worker(tmp_path, i, 4))
        time.sleep(5)
    for p in procs:
        ends(p)
    same(tmp_path, reference)


def test_a_worker_killed_mid_task_is_taken_over(reference, tmp_path):
    a = worker(tmp_path, 0, 2)
    b = worker(tmp_path, 1, 2)
    wait_for(lambda: held_by(tmp_path, a.pid), a)
    os.killpg(a.pid, signal.SIGKILL)  # and never restarted
    a.communicate()
    ends(b)
    same(tmp_path, reference)


def test_a_stopped_worker_does_not_commit_over_its_task_s_new_owner(reference, tmp_path):
    a = worker(tmp_path, 0, 2)
    claim = wait_for(lambda: held_by(tmp_path, a.pid), a)
    os.killpg(a.pid, signal.SIGSTOP)
    base, gen = claim.rsplit(".claim.", 1)
    b = worker(tmp_path, 1, 2)
    # b waits a lease, then takes the task over (or finds the whole stage done past it)
    wait_for(lambda: os.path.exists(f"{base}.claim.{int(gen) + 1}") or not os.path.exists(claim), b)
    os.killpg(a.pid, signal.SIGCONT)
    ends(a), ends(b)
    same(tmp_path, reference)


def test_static_dealing_where_claims_cannot_be_trusted(reference, tmp_path):
    # NANO360_TASKS=static: today's dealing (task i to worker i % world), both workers at once
    outs = [ends(p) for p in [worker(tmp_path, i, 2, NANO360_TASKS="static") for i in (0, 1)]]
    same(tmp_path, reference)
    assert "NANO360_TASKS=static: worker 1 of 2 runs tasks i % 2 == 1" in outs[1]


def test_a_worker_that_meets_the_lock_being_taken_waits_for_its_holder_s_name(tmp_path):
    # a worker of this command flocks .tmp_clean/LOCK and writes its name 0.5 s later: a worker
    # that comes in between sees an empty holder, and must wait for the name, not refuse
    import guard
    tmp = tmp_path / ".tmp_clean"
    tmp.mkdir()
    ready = tmp_path / "ready"
    holder = json.dumps(dict(host="elsewhere", pid=1, command=guard.command_id(), since="now"))
    other = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(tmp / 'LOCK')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        f"open({str(ready)!r}, 'w').close()\n"
        "time.sleep(0.5)\n"
        f"os.pwrite(fd, {holder!r}.encode(), 0)\n"
        "time.sleep(60)\n")])
    try:
        wait_for(lambda: ready.exists(), other)
        curate.clean_corpus(os.path.join(ROOT, "data", "tiny"), str(tmp_path / "clean"), workers=1)
        assert os.path.exists(tmp_path / "clean" / "DONE")
    finally:
        other.kill()
        other.wait()


def test_a_worker_that_comes_while_the_output_is_written_waits_and_wipes_nothing(tmp_path):
    # the assembly has begun (its claim held and touched by a live worker, key.json gone): a new
    # worker must not plan the stage again over it; once that worker is gone, it redoes the stage
    tmp = tmp_path / ".tmp_clean"
    tmp.mkdir()
    (tmp / "docs_0000.jsonl").write_text('{"assembled": true}\n')
    claim = tmp / "assemble.claim.0"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import json, os, socket, time\n"
        f"open({str(claim)!r}, 'w').write(json.dumps(dict(host=socket.gethostname(), pid=os.getpid())))\n"
        "while True:\n"
        f"    os.utime({str(claim)!r}); time.sleep(0.2)\n")])
    wait_for(lambda: claim.exists(), holder)
    env = {**os.environ, "NANO360_LEASE": "2"}
    new = subprocess.Popen([sys.executable, "curate.py", "clean", "config/toy.py", f"--source_dir={ROOT}/data/tiny",
                            f"--clean_dir={tmp_path}/clean", "--workers=1"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(4)  # two leases: the assembler's is alive all along
    assert new.poll() is None and (tmp / "docs_0000.jsonl").read_text() == '{"assembled": true}\n'
    holder.kill()
    holder.wait()  # gone: its claim is taken over at once, and the stage made anew
    ends(new)
    assert os.path.exists(tmp_path / "clean" / "DONE") and not glob.glob(str(tmp_path / "clean" / "*.claim.*"))


def test_a_tokenizer_trainer_taken_over_writes_nothing(tmp_path):
    # a trainer stopped past its lease and woken must not write over its successor's files; the
    # successor trains under generation 1, in part files of its own
    import claims
    path = str(tmp_path / "tok.tiktoken")
    old = claims.Leases(60).take(path)
    args = (os.path.join(ROOT, "data", "tiny"), path, 300, 100000)
    new = claims.Claim(path, 1)
    open(new.path, "w").close()  # the successor's claim: old is overtaken
    curate.train_tokenizer(*args, claim=old)
    assert sorted(os.listdir(tmp_path)) == ["tok.tiktoken.claim.0", "tok.tiktoken.claim.1"]
    curate.train_tokenizer(*args, claim=new)
    assert sorted(os.listdir(tmp_path)) == ["tok.tiktoken", "tok.tiktoken.claim.0", "tok.tiktoken.claim.1",
                                            "tok.tiktoken.json", "tok.tiktoken.report.json"]


@pytest.mark.parametrize("name, value, said", [
    ("NANO360_LEASE", "abc", "NANO360_LEASE='abc': expected the lease in seconds, a number > 0 (default 120)"),
    ("NANO360_LEASE", "0", "NANO360_LEASE='0': expected the lease in seconds, a number > 0 (default 120)"),
    ("NANO360_TASKS", "statc", "NANO360_TASKS='statc': expected claims (the default: any worker takes any task) "
                               "or static (task i to worker i % world)")])
def test_a_bad_setting_is_one_line_and_nothing_is_written(name, value, said, tmp_path):
    r = subprocess.run([sys.executable, "curate.py", "clean", "config/toy.py", f"--source_dir={ROOT}/data/tiny",
                        f"--clean_dir={tmp_path}/clean"], cwd=ROOT, env={**os.environ, name: value},
                       capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stderr) == (2, f"error: {said}\n") and os.listdir(tmp_path) == []
