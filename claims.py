"""
Tasks that any running worker can take (stage.Stage's tasks, on a cluster's shared filesystem:
a throttled Slurm array, workers that start late, are preempted or die).

A task is claimed by creating its claim file exclusively (O_CREAT | O_EXCL: atomic on local
filesystems and on NFS v3 and later), and held by a lease: its holder touches the file every
LEASE / 4 seconds, from a thread. A claim whose file has not changed for LEASE seconds, by the
watcher's own clock (no two hosts' clocks are compared), is a dead or stopped worker's: the
next generation of the claim (NAME.claim.1, .2, ...) is created, exclusively again, so that one
worker alone takes the task over. Only the holder of a task's newest generation commits its
output, by a rename that cannot replace a committed folder: a stopped worker that wakes up
finds itself overtaken, and its work is dropped.

The lease is NANO360_LEASE seconds and NANO360_TASKS=static turns claims off
(executor.task_settings reads both, and names a bad value); this file reads no environment.
"""
import contextlib, json, os, shutil, socket, threading, time

LEASE = 120.0  # seconds without a touch: the holder is gone


def newest(base):
    """The newest generation of base's claim, -1 where none was made (generations are made in
    order, each only after the one before, so the first gap ends them)."""
    g = -1
    while os.path.exists(f"{base}.claim.{g + 1}"):
        g += 1
    return g


def _ended(path):
    """Whether the claim at path names a process of this host that is no more."""
    try:
        with open(path) as f:
            holder = json.load(f)
        if holder["host"] != socket.gethostname() or holder["pid"] == os.getpid():
            return False
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, KeyError, TypeError, OverflowError):  # another's, or being written
        pass
    return False


class Claim:
    """Generation gen of the claim on base (a task's final folder, or a stage's plan)."""

    def __init__(self, base, gen):
        self.base, self.gen = base, gen
        self.path = f"{base}.claim.{gen}"

    def held(self):
        """Still this worker's: no worker took the task over since (a stopped one that woke)."""
        return os.path.exists(self.path) and not os.path.exists(f"{self.base}.claim.{self.gen + 1}")

    def __reduce__(self):  # to a pool's process: the names, not the lease's thread
        return Claim, (self.base, self.gen)


class Leases:
    """This worker's claims, touched by a thread while they are held; and what it saw of the
    others' (each claim file's state, and when by this clock it last changed)."""

    def __init__(self, lease=None):
        self.lease = LEASE if lease is None else lease
        self.held, self.seen, self.thread = {}, {}, None
        self.lock = threading.Lock()

    def take(self, base):
        """A new Claim on base, or None: held by a live lease, or taken by another worker first."""
        g = newest(base)
        if g >= 0 and not self.expired(f"{base}.claim.{g}"):
            return None
        claim = Claim(base, g + 1)
        try:
            fd = os.open(claim.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except (FileExistsError, FileNotFoundError):  # another's first; the stage's folder gone
            return None
        with os.fdopen(fd, "w") as f:
            json.dump(dict(host=socket.gethostname(), pid=os.getpid(),
                           since=time.strftime("%Y-%m-%d %H:%M:%S"),
                           took_over=g if g >= 0 else None), f)
        with self.lock:
            self.held[claim.path] = claim
        if self.thread is None:
            self.thread = threading.Thread(target=self._touch, daemon=True, name="leases")
            self.thread.start()
        return claim

    def expired(self, path):
        """Whether path's lease ran out: its holder is a process of this host that has ended (a
        rerun after a crash starts at once), or its file unchanged for `lease` seconds since this
        worker first saw it so (a worker that arrives late waits a lease before taking over)."""
        try:
            st = os.stat(path)
            state = (st.st_mtime_ns, st.st_ino, st.st_size)
        except FileNotFoundError:
            state = None
        if state is not None and _ended(path):
            return True
        now = time.monotonic()
        last = self.seen.get(path)
        if last is None or last[0] != state:
            self.seen[path] = (state, now)
            return False
        return now - last[1] >= self.lease

    def drop(self, claim):
        """Let the claim go (its task committed, or overtaken): no more touches."""
        with self.lock:
            self.held.pop(claim.path, None)

    def release_all(self):
        """Let every claim go and remove their files (the work stopped here, on an error: the
        next worker, or a rerun in this process, takes the tasks at once)."""
        with self.lock:
            held, self.held = list(self.held.values()), {}
        for c in held:
            if c.held():
                with contextlib.suppress(FileNotFoundError):
                    os.remove(c.path)

    def _touch(self):
        while True:
            time.sleep(self.lease / 4)
            with self.lock:
                claims = list(self.held.values())
            for c in claims:
                try:
                    os.utime(c.path)
                except OSError:  # the folder was assembled and removed: nothing to hold
                    pass


def commit_task(tmp, final, claim, commit_dir):
    """tmp becomes final (commit_dir: its files synced, DONE, renamed) where claim is still
    held and nobody committed final first; else tmp is removed. True where it was committed."""
    if claim is not None and not claim.held():
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    try:
        commit_dir(tmp, final, replace=False)
    except FileExistsError:  # another worker's commit came first: the same bytes
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    except FileNotFoundError:  # overtaken while stopped: the stage moved its work folder away
        if claim is None or claim.held():
            raise
        return False
    return True


def clear(base):
    """Remove every generation of base's claim (its work is complete: nothing more to hold)."""
    for g in range(newest(base), -1, -1):
        try:
            os.remove(f"{base}.claim.{g}")
        except FileNotFoundError:
            pass


class Finished:
    """A task run here and now: the AsyncResult of a pool, for one worker alone."""

    def __init__(self, value):
        self.value = value

    def ready(self):
        return True

    def get(self):
        return self.value


def work(leases, bases, done, start, todo, workers=1, wake=None, waiting=None):
    """Yield i as each task i in todo (bases[i]: its final folder; done(base) when committed) is
    done, here or by another worker. This worker takes every task that no live lease holds, in the
    order listed, at most `workers` at once (start(i, claim) returns an AsyncResult: a pool's,
    or Finished), and waits for the others' tasks only while their leases live: a dead worker's
    task is taken over after its lease. wake: a threading.Event its running tasks set as they
    end (else they are looked at every 10 ms). waiting(n, seconds): told each minute of
    waiting; the others' tasks are looked at every lease / 8 seconds (2 at most)."""
    left, running, idle, said = list(todo), {}, None, time.monotonic()
    while left:
        if wake is not None:
            wake.clear()  # before looking: an end after the look wakes the wait below
        moved = False
        for i, (claim, result) in list(running.items()):
            if result.ready():
                del running[i]
                leases.drop(claim)
                result.get()  # the task's own error, raised here
                moved = True
        still = []
        for k, i in enumerate(left):  # done ones out (yielded), free slots filled, in order
            if i in running:
                still.append(i)
            elif done(bases[i]):
                yield i
            elif len(running) < workers and (claim := leases.take(bases[i])) is not None:
                running[i], moved = (claim, start(i, claim)), True
                still.append(i)
            else:
                still.append(i)
                if len(running) >= workers and running:  # nothing more to take for now
                    still += left[k + 1:]
                    break
        left = still
        if moved:
            idle = None
            continue
        idle = idle or time.monotonic()
        if waiting and not running and time.monotonic() - said > 60:
            waiting(len(left), time.monotonic() - idle)
            said = time.monotonic()
        pause = min(2.0, leases.lease / 8)  # (the others' tasks, and dead workers' leases)
        if running and wake is not None:
            wake.wait(pause)
        else:
            time.sleep(0.01 if running else pause)
