"""
The Stage executor: a folder out_dir made from the documents under src by independent tasks, in
the manner of datatrove. The input is cut into pieces of about shard_mb (stage.plan_pieces); each
task writes a folder of its own whole (stage.tmp_dir -> commit_dir, DONE last); the output is
assembled from them. Any worker takes any task that no live lease holds (claims.py), so the same
command runs as N local processes, one worker per torchrun rank or per Slurm array task, however
many run at once (a throttled array, late, preempted or dead workers; a shared filesystem holds
the folders); a rerun skips every task with DONE, so a stage killed halfway resumes where it
stopped; and a task's output depends on its inputs only, so the result is the same bytes for any
number of workers in any order.
"""
import contextlib, errno, itertools, json, os, shutil, sys, threading, time

import claims
from guard import (OUTPUT_KEYS, Busy, FileLock, alive, command_id, describe, json_dict,
                   output_problem)
from stage import (DONE, LOCK, DataError, Progress, commit_dir, input_files, is_done,
                   plan_pieces, read_json, read_piece, remove_if_there, report_problems,
                   skipped_note, tmp_dir, whole, write_json)


def task_settings():
    """(lease seconds, static) from NANO360_LEASE (default 120) and NANO360_TASKS (claims, the
    default, or static): a DataError names a bad value."""
    lease, mode = os.environ.get("NANO360_LEASE", "120"), os.environ.get("NANO360_TASKS", "claims")
    try:
        seconds = float(lease)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise DataError(f"NANO360_LEASE={lease!r}: expected the lease in seconds, a number > 0 "
                        "(default 120)")
    if mode not in ("claims", "static"):
        raise DataError(f"NANO360_TASKS={mode!r}: expected claims (the default: any worker takes "
                        "any task) or static (task i to worker i % world)")
    return seconds, mode == "static"


def _run_task(job):
    """One task: fn(stage, i, folder) fills a fresh temporary folder of this claim's, which
    becomes final whole where the claim is still held (one that fails is removed: the space it
    took, back; one taken over meanwhile is dropped, whatever it raised)."""
    stage, final, fn, i, args, claim = job
    tmp, t0 = tmp_dir(final if claim is None else f"{final}.{claim.gen}", create=False), time.time()
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        # mkdir, not makedirs: a worker stopped past its lease, woken after the stage moved its
        # work away, must not make the stage's folders again (they would be committed with it)
        os.mkdir(tmp)
        fn(stage, i, tmp, *args)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if claim is None or claim.held():
            raise
    else:
        if (commit_dir(tmp, final) if claim is None
                else claims.commit_task(tmp, final, claim, commit_dir)):
            return time.time() - t0
    if claim is not None and not claim.held():  # overtaken: where the stage was finished
        with contextlib.suppress(OSError):  # meanwhile, the folders it made again, if empty
            os.removedirs(os.path.dirname(tmp))
    return None


class Stage:
    """A folder out_dir made from the documents under src by tasks; settings (anything that
    changes the result) and the input files' names, sizes and times are its key: a rerun with
    the same key resumes, any other starts over. workers: local processes (0: every core);
    rank, world: this process among world workers (config.place).
    out_dir must be new, empty or the stage's own (guard.output_problem; documents=True: not
    inside src either). Any worker plans, runs tasks and assembles, each the first to claim it
    (claims.py; NANO360_TASKS=static: rank 0 plans and assembles, rank r runs the tasks
    i % world == r). The first worker holds .tmp_<out_dir>/LOCK: the workers of its command
    (command_id) share it, another command is refused. A full disk: one line."""

    def __init__(self, name, src, out_dir, settings, task_bytes, workers=0, rank=0, world=1,
                 setup=None, documents=False):
        self.name, self.root, self.out_dir = name, src, out_dir.rstrip(os.sep)
        self.rank, self.world, self.lock = rank, world, None
        self.tmp = tmp_dir(self.out_dir, create=False)
        self.workers = 1 if world > 1 else workers or os.cpu_count() or 1
        self.seconds, self._tasks, self._pool, self.sizes, self.links = {}, None, None, [], []
        lease, self.static = task_settings()
        self.leases = None if self.static else claims.Leases(lease)
        if is_done(self.out_dir):
            return
        why = output_problem(name, self.out_dir, self.tmp, src, documents)
        if why:
            raise DataError(why)
        files, other = input_files(src, self.links)
        if not files:
            raise DataError(f"{src}: no documents found "
                            "(looked for .jsonl, .jsonl.gz and .txt files)")
        self.skipped = skipped_note(src, other)
        self._tasks = plan_pieces(src, files, max(1, int(task_bytes)))
        rel = {p: os.path.relpath(p, src) if p != src else "" for p in files}
        size = {rel[p]: os.path.getsize(p) for p in files}
        self.sizes = [sum((b if b is not None else size[f]) - a for f, a, b in t)
                      for t in self._tasks]
        plan = dict(stage=name, settings=settings, tasks=self._tasks)
        stats = [[rel[p], os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in files]
        key_path, key = (os.path.join(self.tmp, "key.json"),
                         json.loads(json.dumps(dict(plan, files=stats))))
        if not self.static:
            self._claim_plan(plan, key_path, key, setup)
            return
        if world > 1:
            print(f"{name}: NANO360_TASKS=static: worker {rank} of {world} runs tasks i % {world} "
                  f"== {rank}; every worker must run at once, and rank 0 plans and assembles")
        if rank == 0:
            try:
                with self._disk():
                    self._plan(plan, key_path, key, setup)
            except BaseException:
                self.__exit__()  # the lock let go
                raise
        else:
            def planned():  # by rank 0 of this command, not by another command
                holder = self._not_another()
                return self.done or (holder.get("command") == command_id()
                                     and read_json(key_path) == key)
            self._wait(planned, f"rank 0 to plan {self.tmp}")

    def _claim_plan(self, plan, key_path, key, setup):
        """Any worker plans: the first to claim it (the others wait while its lease lives, and
        take over from one that died); a worker that finds the plan made joins."""
        os.makedirs(self.tmp, exist_ok=True)
        t0 = time.time()
        self._lock()
        if self.lock is not None and read_json(key_path) == key:  # the first worker of a rerun
            print(f"{self.name}: resuming {self.tmp} ({self.finished()} tasks finished)")
        while not self.done and read_json(key_path) != key:
            self._not_another()
            g = claims.newest(os.path.join(self.tmp, "assemble"))
            if g >= 0 and not self.leases.expired(os.path.join(self.tmp, f"assemble.claim.{g}")):
                self._say_wait(t0, f"the worker that writes {self.out_dir}")  # (its key.json
                time.sleep(0.5)  # is gone: that is no plan to make again)
                continue
            claim = self.leases.take(os.path.join(self.tmp, "plan"))
            if claim is None:
                self._say_wait(t0, "the worker that plans " + self.tmp)
                time.sleep(0.5)
                continue
            try:
                with self._disk():
                    self._plan(plan, key_path, key, setup, keep=os.path.basename(claim.path))
            except BaseException:
                self.__exit__()  # the lock let go
                raise
            finally:
                self.leases.drop(claim)
                remove_if_there(claim.path)

    def _lock(self):
        """The command's lock: taken where no live process holds it, shared where a worker of
        this command holds it, and a DataError where another command's does."""
        os.makedirs(self.tmp, exist_ok=True)
        t0 = time.time()
        while True:
            try:
                self.lock = FileLock(os.path.join(self.tmp, LOCK))
                break
            except Busy as e:
                if not e.holder and time.time() - t0 < 10:  # taken this instant: its holder's
                    time.sleep(0.05)                       # name is on its way
                    continue
                if e.holder.get("command") != command_id():
                    self._busy(e.holder)
                return
        gone = self.lock.taken_over
        if gone and gone.get("command") != command_id():
            print(f"{self.lock.path}: taking over the lock of a command that is gone "
                  f"({describe(gone)})")

    def _plan(self, plan, key_path, key, setup, keep=None):
        """The plan, or the one there when its key is the same (static: the lock first)."""
        if self.static:
            self._lock()
        if self.done:  # finished by another command while this one looked
            self.__exit__()
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif read_json(key_path) == key:
            print(f"{self.name}: resuming {self.tmp} ({self.finished()} tasks finished)")
        else:  # anything there was made from other inputs or settings
            tmp_dir(self.out_dir, keep=(LOCK, keep))
            if setup:
                setup(self.tmp)
            write_json(os.path.join(self.tmp, "plan.json"), plan)
            write_json(key_path, key)  # last: the other workers start when it is there

    def _not_another(self):
        """The lock's holder (a dict, maybe empty); a DataError where another live command's."""
        holder = json_dict(os.path.join(self.tmp, LOCK))
        if holder.get("command", command_id()) != command_id() and alive(holder):
            self._busy(holder)
        return holder

    def _busy(self, holder):
        path = os.path.join(self.tmp, LOCK)
        raise DataError(f"{self.out_dir}: {self.name} is running on it in another command "
                        f"({describe(holder)}; {path}): wait for it to end, or choose another "
                        f"{OUTPUT_KEYS.get(self.name, 'output folder')}; if none is running, "
                        f"delete {path}")

    @contextlib.contextmanager
    def _disk(self):
        """A full disk (or a file size limit) as one line: the folder, the free space, and that
        a rerun resumes (the finished tasks are kept)."""
        try:
            yield
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(self.tmp))).free
            raise DataError(f"{self.out_dir}: writing it failed: {e.strerror} "
                            f"({free / 2**30:.2f} GiB free on that disk; {self.finished()} "
                            f"finished tasks kept in {self.tmp}): make room, then rerun to "
                            "resume") from None

    @property
    def done(self):
        return is_done(self.out_dir)

    @property
    def tasks(self):
        """The pieces of every task (plan.json, read once per process)."""
        if self._tasks is None:
            self._tasks = read_json(os.path.join(self.tmp, "plan.json"))["tasks"]
        return self._tasks

    def __getstate__(self):  # what goes to a worker process: not the plan, which it reads itself
        return {**self.__dict__, "_tasks": None, "_pool": None, "sizes": [], "lock": None,
                "leases": None}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None
        if self.leases is not None:
            self.leases.release_all()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def documents(self, i, problems):
        """The documents of task i, in order."""
        for rel, start, end in self.tasks[i]:
            yield from read_piece(self.root, rel, start, end, problems)

    def path(self, phase, i=None):
        """The folder of task i of phase (or of the whole phase)."""
        return os.path.join(self.tmp, "work", phase, *([] if i is None else [f"{i:06d}"]))

    def finished(self):
        return sum(DONE in fs for _, _, fs in os.walk(os.path.join(self.tmp, "work")))

    def run(self, phase, n, fn, *args):
        """Run tasks 0..n-1 of phase, fn(stage, i, folder, *args) each, and return when all n are
        done (by any worker). A task with DONE is not run again; nothing runs once the whole
        stage is (the other workers may have finished it while this one was on its way). This
        worker takes every task no live lease holds, as claims.py says (NANO360_TASKS=static:
        the tasks i % world == rank)."""
        t0 = time.time()
        if self.done:
            return
        order = list(range(n))
        if n == len(self.sizes):  # tasks over the input: the largest first, none left to run alone
            order.sort(key=lambda i: -self.sizes[i])
        mine = [i for i in order if i % self.world == self.rank] if self.static else order
        todo = [i for i in mine if not is_done(self.path(phase, i))]
        if len(todo) < len(mine):
            print(f"{self.name} {phase}: {len(mine) - len(todo)} of {len(mine)} tasks already done")
        if self.workers > 1 and len(todo) > 1 and self._pool is None:
            # spawned, not forked: fresh processes, whatever threads this one has
            import multiprocessing
            self._pool = multiprocessing.get_context("spawn").Pool(self.workers)
        pool = self._pool if self.workers > 1 and len(todo) > 1 else None
        desc = self.name if phase == self.name else f"{self.name} {phase}"
        bases = [self.path(phase, i) for i in range(n)]
        os.makedirs(self.path(phase), exist_ok=True)
        if self.static:
            jobs = [(self, bases[i], fn, i, args, None) for i in todo]
            # lazily: each task as the progress below asks for it
            runs = pool.imap_unordered(_run_task, jobs) if pool else map(_run_task, jobs)
        else:
            wake = threading.Event()  # set as each task of the pool ends

            def start(i, claim):
                job = (self, bases[i], fn, i, args, claim)
                if pool is None:
                    return claims.Finished(_run_task(job))
                return pool.apply_async(_run_task, (job,), callback=lambda _: wake.set(),
                                        error_callback=lambda _: wake.set())
            runs = claims.work(self.leases, bases, lambda b: self.done or is_done(b), start,
                               todo, self.workers, wake,
                               waiting=lambda k, sec: print(
                                   f"{self.name}: rank {self.rank} of {self.world} waiting "
                                   f"{sec:.0f} s for {k} tasks of {phase} that other workers "
                                   "hold", file=sys.stderr))
        with self._disk():
            for _ in Progress(desc, runs, " tasks", len(mine), len(mine) - len(todo)):
                pass
        left = [p for p in bases if not is_done(p)]
        while left and not self.done:  # static: the tasks of other workers
            left = [p for p in left if not is_done(p)]
            if left:
                self._wait(lambda: self.done or is_done(left[0]),
                           f"{len(left)} tasks of {phase} that other workers run")
        self.seconds[phase] = round(time.time() - t0, 3)

    def finish(self, assemble):
        """assemble(folder) writes the outputs from the tasks' folders, then the work is removed
        and the folder becomes out_dir whole: by the first worker to claim it (static: rank 0);
        the others wait for that, and take over from one that died."""
        t0 = time.time()
        while not self.done:
            claim = None
            if not self.static:
                claim = self.leases.take(os.path.join(self.tmp, "assemble"))
            if claim is None and (not self.static or self.rank != 0):
                self._say_wait(t0, f"the worker that writes {self.out_dir}")
                time.sleep(0.5)
                continue
            try:
                with self._disk():
                    try:
                        assemble(self.tmp)
                    except Exception:  # overtaken while stopped, it met the new holder's work
                        if claim is None or claim.held():  # (a file it moved, or gone)
                            raise
                    if claim is not None and not claim.held():
                        continue  # overtaken while it was stopped: the new holder writes it
                    # renamed away in one step, then removed: a worker woken past its lease
                    # finds no work folder to commit a task into (a removal in progress could
                    # meet its rename, and the folder would be committed with its task)
                    gone = os.path.join(os.path.dirname(self.tmp),
                                        f".del_work_{os.path.basename(self.out_dir)}")
                    shutil.rmtree(gone, ignore_errors=True)
                    with contextlib.suppress(FileNotFoundError):  # a resumed assembly: gone
                        os.rename(os.path.join(self.tmp, "work"), gone)
                    shutil.rmtree(gone, ignore_errors=True)
                    os.remove(os.path.join(self.tmp, "key.json"))
                    mine = os.path.basename(claim.path) if claim is not None else None
                    for name in os.listdir(self.tmp):  # the other claims: the plan's, the dead's
                        if ".claim." in name and name != mine:
                            remove_if_there(os.path.join(self.tmp, name))
                    for d, _, files in os.walk(self.tmp):  # half-written files (stage.whole) of
                        for name in files:  # a worker stopped midway, or killed: never output
                            if name.endswith(".part"):
                                remove_if_there(os.path.join(d, name))
                    commit_dir(self.tmp, self.out_dir, dict(stage=self.name))
                    if mine:  # held to the end: a worker that comes meanwhile makes no plan
                        remove_if_there(os.path.join(self.out_dir, mine))
            finally:
                if claim is not None:
                    self.leases.drop(claim)
        if self.lock is not None:
            self.lock.release(moved_to=os.path.join(self.out_dir, LOCK))  # it went along
            self.lock = None
        else:
            remove_if_there(os.path.join(self.out_dir, LOCK))

    def _say_wait(self, t0, what):
        """A line each minute of waiting for what (on stderr)."""
        if time.time() - t0 > 60 and time.time() - getattr(self, "_said", 0) > 60:
            self._said = time.time()
            print(f"{self.name}: rank {self.rank} of {self.world} waiting "
                  f"{time.time() - t0:.0f} s for {what}", file=sys.stderr)

    def move(self, phase, i, name, dest):
        """Move a file of a finished task to dest (a rerun after a crash here finds it moved)."""
        src = os.path.join(self.path(phase, i), name)
        if os.path.exists(src):
            with contextlib.suppress(FileExistsError):  # mkdir: the output's own folder alone,
                os.mkdir(os.path.dirname(dest))  # never the stage's, once committed, again
            os.replace(src, dest)
        elif not os.path.exists(dest):
            raise DataError(f"{src}: missing from a finished task")

    def _wait(self, ready, what):
        t0 = time.time()
        while not ready():
            self._say_wait(t0, what)
            time.sleep(0.5)

    # --- what a stage writes beside its outputs: problems.log, report.json, timing.json

    def write_problems(self, folder, problems_of_tasks):
        """folder/problems.log: the problems of each task (an iterable of lists, read one task at
        a time), then the symbolic links of the input and the files that are not documents; the
        first 20 printed. Returns the count."""
        shown, count = [], 0
        skipped = [self.links + ([self.skipped] if self.skipped else [])]
        with whole(os.path.join(folder, "problems.log"), encoding="utf-8") as log:
            for problems in itertools.chain(problems_of_tasks, skipped):
                log.writelines(p + "\n" for p in problems)
                shown += problems[:max(0, 21 - len(shown))]
                count += len(problems)
        report_problems(shown, self.root, count, os.path.join(self.out_dir, "problems.log"))
        return count

    def write_timing(self, folder, size, seconds):
        """folder/timing.json, and the stage's throughput in one line."""
        write_json(os.path.join(folder, "timing.json"),
                   dict(seconds=round(seconds, 3), phases=self.seconds, bytes=size,
                        workers=self.workers, world=self.world, cores=os.cpu_count()))
        ranks = f" x {self.world} ranks" if self.world > 1 else ""
        print(f"{self.name}: {size / 1e6:.1f} MB in {seconds:.1f} s, "
              f"{size / 1e6 / max(seconds, 1e-9) / self.workers:.1f} MB/s per worker, "
              f"{self.workers} worker{'s' * (self.workers > 1)}{ranks}")
