"""claims.py by itself: a claim is exclusive, a live lease is never taken over, a dead one is
after its lease (by one worker alone), an overtaken worker commits nothing (nor does one woken
after its stage moved on), a committed task is never replaced, and claims.work runs every task
once across workers that come and go.
(The stages on a simulated cluster: test_cluster.py.)"""
import os, threading, time

import claims
import stage


def dead(leases, claim):
    """A worker that died holding claim: its file stays, nobody touches it."""
    leases.drop(claim)


def taken_over(final):
    """(the dead worker's claim of final, the claim another worker took over after its lease)."""
    a, b = claims.Leases(0.2), claims.Leases(0.2)
    stale = a.take(final)
    dead(a, stale)
    b.take(final)  # first sight: its lease starts now
    time.sleep(0.25)
    return stale, b.take(final)


def test_a_claim_is_exclusive_and_a_live_lease_is_kept(tmp_path):
    base = str(tmp_path / "000001")
    a, b = claims.Leases(0.4), claims.Leases(0.4)
    mine = a.take(base)
    assert mine is not None and mine.gen == 0 and mine.held()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.5:  # a's thread touches it every 0.1 s: never expires
        assert b.take(base) is None
        time.sleep(0.05)
    assert mine.held() and claims.newest(base) == 0


def test_a_dead_worker_s_claim_is_taken_over_by_one_worker_after_its_lease(tmp_path):
    base = str(tmp_path / "000002")
    a = claims.Leases(0.3)
    old = a.take(base)
    dead(a, old)
    others = [claims.Leases(0.3) for _ in range(4)]
    assert all(o.take(base) is None for o in others)  # first sight: its lease starts now
    time.sleep(0.35)
    got = [o.take(base) for o in others]
    took = [c for c in got if c is not None]
    assert len(took) == 1 and took[0].gen == 1 and took[0].held()
    assert not old.held()  # the dead (or stopped) one finds itself overtaken


def test_an_overtaken_worker_commits_nothing_and_a_commit_is_never_replaced(tmp_path):
    final = str(tmp_path / "000003")
    stale, new = taken_over(final)
    assert new is not None and new.gen == 1
    for who, claim, text in (("stale", stale, b"old"), ("new", new, b"new")):
        tmp = tmp_path / f".tmp_{who}"
        tmp.mkdir()
        (tmp / "out").write_bytes(text)
        committed = claims.commit_task(str(tmp), final, claim, stage.commit_dir)
        assert committed == (who == "new") and not tmp.exists()
    assert open(os.path.join(final, "out"), "rb").read() == b"new"
    # a second commit by the holder (say a worker's retry) leaves the first in place
    tmp = tmp_path / ".tmp_again"
    tmp.mkdir()
    (tmp / "out").write_bytes(b"again")
    assert not claims.commit_task(str(tmp), final, new, stage.commit_dir)
    assert open(os.path.join(final, "out"), "rb").read() == b"new" and stage.is_done(final)


def test_work_runs_every_task_once_across_workers_one_of_which_dies(tmp_path):
    """Workers in threads over 12 tasks: one commits two and dies holding a third (its claim
    untouched from then on); two others finish everything, each task committed once."""
    bases = [str(tmp_path / f"{i:06d}") for i in range(12)]
    ran, lock = [], threading.Lock()

    def worker(name, die_after=None):
        leases = claims.Leases(0.3)
        count = [0]

        def start(i, claim):
            count[0] += 1
            if die_after is not None and count[0] > die_after:
                raise SystemExit  # dies holding this claim, before any commit
            with lock:
                ran.append((name, i))
            tmp = tmp_path / f".tmp_{i}.{claim.gen}"
            tmp.mkdir()
            (tmp / "who").write_text(name)
            claims.commit_task(str(tmp), bases[i], claim, stage.commit_dir)
            return claims.Finished(i)
        try:
            got = list(claims.work(leases, bases, stage.is_done, start, range(12)))
            assert sorted(got) == list(range(12))
        except SystemExit:
            for c in list(leases.held.values()):
                dead(leases, c)
    threads = [threading.Thread(target=worker, args=("dies", 2))]
    threads[0].start()
    threads[0].join()
    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(stage.is_done(b) for b in bases)
    committed = {i: open(os.path.join(bases[i], "who")).read() for i in range(12)}
    assert sorted(i for _, i in ran) == list(range(12))  # each task ran (and committed) once
    assert {committed[i] for i in range(12)} <= {"dies", "a", "b"}
    assert sum(v == "dies" for v in committed.values()) == 2
    assert claims.newest(bases[2]) == 1  # the task it died on: taken over, generation 1


def test_a_worker_woken_after_its_stage_moved_on_writes_nothing_into_it(tmp_path):
    # a worker stopped past its lease wakes after the assembler moved the work folder away (then
    # committed the stage): its task's commit finds no folder, and its next task makes none
    import executor
    work = tmp_path / ".tmp_out" / "work" / "clean"
    work.mkdir(parents=True)
    final = str(work / "000001")
    stale, new = taken_over(final)
    assert new is not None and not stale.held()

    class StoppedAfterTheCheck:  # held when it checks, overtaken when it goes on
        gen, checks = stale.gen, 0

        def held(self):
            self.checks += 1
            return self.checks == 1
    tmp = work / ".tmp_000001.0"
    tmp.mkdir()
    (tmp / "out").write_bytes(b"late")
    os.rename(tmp_path / ".tmp_out" / "work", tmp_path / ".del_work_out")  # the assembler's move
    assert claims.commit_task(str(tmp), final, StoppedAfterTheCheck(), stage.commit_dir) is False
    assert not (tmp_path / ".tmp_out" / "work").exists()

    def task(st, i, folder):
        open(os.path.join(folder, "out"), "w").write("late")
    assert executor._run_task((None, str(work / "000002"), task, 2, (), stale)) is None
    assert sorted(os.listdir(tmp_path / ".tmp_out")) == []  # no work folder made again


def test_two_workers_writing_one_file_never_leave_half_of_it(tmp_path):
    # an assembler woken past its lease writes the files the new one writes: each writes under a
    # name of its own and renames it whole, so neither truncates the other's, and the file is
    # always whole (with a plain open, the second writer's open would truncate the first's)
    path = tmp_path / "report.json"
    text = "x" * 100_000
    with stage.whole(str(path)) as late:  # the stopped one had begun
        late.write(text[:10])
        with stage.whole(str(path)) as new:  # the new holder writes it all meanwhile
            new.write(text)
        assert path.read_text() == text
        late.write(text[10:])  # woken: it goes on, and its file replaces the other whole
    assert path.read_text() == text and os.listdir(tmp_path) == ["report.json"]
    try:  # an error midway leaves nothing half written, neither the file nor a part
        with stage.whole(str(tmp_path / "other.json")) as f:
            f.write("half")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert os.listdir(tmp_path) == ["report.json"]
