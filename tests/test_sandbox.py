"""Generated code run by sandbox.run_program: each hostile program scores as a failure, and this
process, its files, its environment and the rest of the run are untouched. Where the same program
run without the sandbox would succeed, the test runs it so too: the check can fail."""
import itertools, math, os, resource, signal, socket, subprocess, sys, time, uuid
from fractions import Fraction

import pytest

import sandbox


def live_processes(uid=None):
    """Pids of the processes (not zombies) running sandbox.py, or owned by uid."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        if state != "Z" and (sandbox.__file__.encode() in cmdline or owner == uid):
            found.append(int(pid))
    return found


def unsandboxed(source, **kw):
    """The exit code of the same program run plainly, as a caller without sandbox.py would."""
    return subprocess.run([sys.executable, "-c", source], capture_output=True, timeout=20,
                          **kw).returncode


def test_a_correct_program_passes_and_a_wrong_one_fails():
    ok = sandbox.run_program("import math, collections, re, itertools, heapq, functools, string\n"
                             "def add(a, b):\n    return a + b\n"
                             "assert add(2, 3) == 5\nprint('sum', add(2, 3))\n", timeout=5)
    assert (ok.passed, ok.status, ok.stdout) == (True, "passed", "sum 5\n"), ok.stderr
    wrong = sandbox.run_program("def add(a, b):\n    return a - b\nassert add(2, 3) == 5\n",
                                timeout=5)
    assert (wrong.passed, wrong.status) == (False, "failed")
    assert wrong.stderr.rstrip().endswith("AssertionError")
    assert not live_processes()


@pytest.mark.parametrize("sig, status", [("signal.SIGSEGV", "killed: SIGSEGV"),
                                         ("40", "killed: 40")])
def test_a_program_killed_by_a_signal_says_which(sig, status):
    r = sandbox.run_program(f"import os, signal\nos.kill(os.getpid(), {sig})\n", timeout=5)
    assert (r.passed, r.status) == (False, status)  # 40, a real-time signal, has no name


def test_the_program_runs_in_a_fresh_folder_with_nothing_inherited(monkeypatch):
    monkeypatch.setenv("NANO360_SECRET", "hunter2")
    r = sandbox.run_program(
        "import os\nprint(os.getcwd())\n"
        "assert os.environ['HOME'] == os.environ['TMPDIR'] == os.getcwd()\n"
        "assert sorted(os.environ) == ['HOME', 'LANG', 'PATH', 'PYTHONHASHSEED', 'TMPDIR']\n"
        "open('notes.txt', 'w').write('mine')\nassert open('notes.txt').read() == 'mine'\n",
        timeout=5)
    assert r.passed, r.stderr
    home = r.stdout.strip()  # and removed afterwards
    assert os.path.basename(home).startswith("nano360-sandbox-") and not os.path.exists(home)


def test_the_parents_environment_stays_hidden(monkeypatch):
    monkeypatch.setenv("NANO360_SECRET", "hunter2")
    # exits 0 if it finds the secret, or reads the environment of its parent, this test or init
    source = ("import os, sys\nif 'hunter2' in str(os.environ): sys.exit(0)\n"
              f"for pid in [os.getppid(), {os.getpid()}, 1]:\n"
              "    try:\n        if open(f'/proc/{pid}/environ', 'rb').read(): sys.exit(0)\n"
              "    except OSError as e:\n        print(pid, e)\nsys.exit(1)\n")
    assert unsandboxed(source) == 0  # plainly, it finds it
    r = sandbox.run_program(source, timeout=5)
    assert (r.passed, r.status) == (False, "failed"), r.stdout
    assert r.stdout.count("Permission denied") == 3


def test_a_fork_bomb_fails_and_leaves_no_process():
    start = time.monotonic()
    r = sandbox.run_program("import os\nwhile True:\n    os.fork()\n", timeout=5, max_procs=16)
    assert not r.passed and time.monotonic() - start < 5
    assert r.stderr.rstrip().endswith("BlockingIOError: [Errno 11] Resource temporarily "
                                      "unavailable")  # the process limit, not the timeout
    assert live_processes(r.uid) == []


def test_a_process_that_left_the_group_is_killed_too():
    # setsid() takes a child out of the process group that a timeout kills; as root the run's uid
    # finds it, otherwise it outlives the run, as the module says
    r = sandbox.run_program("import os, time\nif os.fork() == 0:\n    os.setsid()\n"
                            "    time.sleep(30)\n", timeout=5)
    assert r.passed
    left = live_processes(r.uid)
    if os.geteuid() == 0:
        assert left == [] and r.uid in sandbox.UIDS and f"uid {r.uid}" in r.layers
    else:
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert left and "setsid() outlives the run" in " ".join(sandbox.__doc__.split())


@pytest.mark.parametrize("loop", ["while True:\n    pass\n",
                                  "import time\nwhile True:\n    time.sleep(1)\n"])
def test_an_endless_loop_times_out(loop):
    start = time.monotonic()
    r = sandbox.run_program(loop, timeout=1.0)
    assert (r.passed, r.status) == (False, "timed out")
    assert 1.0 <= r.seconds and time.monotonic() - start < 2.0
    assert live_processes(r.uid) == []


@pytest.mark.parametrize("size", ["100 * 2**30", "768 * 2**20"])  # more than the machine; the limit
def test_a_large_allocation_fails_and_the_parent_keeps_its_memory(size):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = sandbox.run_program(f"b = bytearray({size})\nb[-1] = 1\n", timeout=5, memory_mb=512)
    assert (r.passed, r.status) == (False, "failed")
    assert r.stderr.rstrip().endswith("MemoryError")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 50_000  # KiB: the peak did not move


def test_output_is_cut_at_the_file_limit_and_kept_to_its_tail():
    r = sandbox.run_program("while True:\n    print('x' * 1000)\n", timeout=5, file_mb=1, tail=100)
    assert (r.passed, r.status) == (False, "failed") and r.seconds < 5
    assert "File too large" in r.stderr and len(r.stderr) <= 100
    assert r.stdout == "x" * 100  # 1 MiB, cut mid-line


def test_writes_outside_its_folder_fail(tmp_path):
    outside = [str(tmp_path / "escaped.txt"), f"/tmp/nano360-escape-{uuid.uuid4().hex}",
               f"/dev/shm/nano360-escape-{uuid.uuid4().hex}"]
    source = ("import sys\nwritten = []\n"
              f"for path in ['inside.txt'] + {outside!r}:\n"
              "    try:\n        open(path, 'w').write('x')\n        written.append(path)\n"
              "    except OSError as e:\n        print(e)\n"
              "print('written', written)\nsys.exit(0 if len(written) > 1 else 1)\n")
    r = sandbox.run_program(source, timeout=5)
    assert (r.passed, r.status) == (False, "failed")
    assert "written ['inside.txt']" in r.stdout  # its own folder is writable
    assert [p for p in outside if os.path.exists(p)] == []


def test_the_parent_and_this_test_cannot_be_killed():
    me = os.getpid()
    source = ("import os, signal, sys\nhit = 0\n"
              "for kill in (lambda: os.kill(os.getppid(), signal.SIGKILL),\n"
              f"             lambda: os.kill({me}, signal.SIGKILL),\n"
              f"             lambda: os.killpg(os.getpgid({me}), signal.SIGKILL)):\n"
              "    try:\n        kill()\n        hit += 1\n"
              "    except OSError as e:\n        print(e)\n"
              "sys.exit(0 if hit else 1)\n")
    r = sandbox.run_program(source, timeout=5)
    assert (r.passed, r.status) == (False, "failed")
    assert r.stdout.count("Operation not permitted") == 3
    assert os.getpid() == me  # and here we are


def test_no_connection_reaches_a_local_listener():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        source = ("import socket, sys\n"
                  f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
                  "except OSError as e:\n    print(e)\n    sys.exit(1)\n")
        assert unsandboxed(source) == 0  # plainly, it connects
        listener.accept()[0].close()
        r = sandbox.run_program(source, timeout=5)
        assert (r.passed, r.status) == (False, "failed")
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nobody knocked
            listener.accept()


def test_pass_at_k_matches_counting_every_draw():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                draws = list(itertools.combinations(range(n), k))  # samples 0..c-1 passed
                counted = sum(min(d) < c for d in draws) / len(draws)
                assert math.isclose(sandbox.pass_at_k(n, c, k), counted, rel_tol=1e-12,
                                    abs_tol=1e-15), (n, c, k)
    # large n, where the binomials themselves would overflow a float
    exact = 1 - Fraction(math.comb(1500, 100), math.comb(2000, 100))
    assert math.isclose(sandbox.pass_at_k(2000, 500, 100), float(exact), rel_tol=1e-12)
    assert sandbox.pass_at_k(200, 1, 1) == pytest.approx(0.005)
    assert sandbox.pass_at_k(10, 0, 10) == 0.0
    for bad in [(5, 6, 1), (5, 2, 0), (5, 2, 6), (5, -1, 1)]:
        with pytest.raises(ValueError, match="pass_at_k needs"):
            sandbox.pass_at_k(*bad)
