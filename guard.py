"""
The folder a command may write, and one command at a time: what stage.Stage (clean, dedup,
tokenize) and fetch-demo check before they write an output folder they will later rename into
place, replacing what was there.

output_problem: the folder must be new, empty or the stage's own (complete, or unfinished: the
.tmp_ folder beside it), never its input nor a folder holding it; anything else is refused in one
line naming the folder and what is in it, as whatever is there is not ours to delete.

FileLock: a lock file that names its holder. The command holding it flocks the file and writes
there its host, pid, start time and command id: what the workers of one command share and
another command does not (command_id). A lock left by a command that died is taken over: flock
ends with its process, and where the filesystem has no flock, a holder on this host whose pid is
gone is gone. Nothing here imports anything of nano360's, nor torch.
"""
import fcntl, json, os, re, socket, time

OUTPUT_KEYS = {"clean": "clean_dir", "dedup": "docs_dir (dedup_dir when tasks_dir is set)",
               "decontaminate": "docs_dir", "tokenize": "tokens_dir",
               "fetch-demo": "--out folder"}  # how the user names each output, for messages
# the names in a stage's output (plan.json ... the tokenizer, shards, removed/, clusters/): a
# folder of only these without DONE is what a killed older nano360 left, its own to redo
OURS = re.compile(r"DONE|LOCK|(plan|report|manifest|timing|clusters)\.jsonl?|problems\.log"
                  r"|tokenizer\.tiktoken(\.json)?|(tokenizer|tokenizer_config|config)\.json"
                  r"|\d+_\d+\.jsonl|(train|val)_.+_\d+\.bin")


def json_dict(path):
    """The JSON object in path; {} when there is none (missing, half written, not an object)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.loads(f.read() or "{}")
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


def _ours(path):
    name = os.path.basename(path)
    if os.path.isdir(path) and not os.path.islink(path):
        return name in ("removed", "clusters") and all(
            OURS.fullmatch(f) and os.path.isfile(os.path.join(path, f)) for f in os.listdir(path))
    return OURS.fullmatch(name) is not None


def output_problem(name, out_dir, tmp, src=None, documents=False):
    """Why stage name may not write out_dir (its work folder tmp beside it), in one line, or
    None: out_dir is a file or a link, holds anything a stage does not write, or tmp holds
    another stage's unfinished work; out_dir is src or holds it, or lies inside it when the
    output is documents (documents=True: the next run would read them as input). Real paths
    are compared, so a link to the input is the input. A complete out_dir is not asked about."""
    key = OUTPUT_KEYS.get(name, "output folder")
    if src is not None:
        real, real_src = os.path.realpath(out_dir), os.path.realpath(src)
        if real == real_src:
            return (f"{out_dir}: {name}'s output would replace its input {src} (the same "
                    f"folder); choose another {key}")
        if real_src.startswith(real + os.sep):
            return (f"{out_dir}: holds {name}'s input {src}, which its output would replace; "
                    f"choose another {key}")
        if documents and real.startswith(real_src + os.sep):
            return (f"{out_dir}: inside {name}'s input {src}, whose next run would read its "
                    f"documents as input; choose a {key} outside it")
    if os.path.islink(out_dir):
        return (f"{out_dir}: a symbolic link (to {os.readlink(out_dir)}), which {name} would "
                f"replace by its output folder; set {key} to the folder itself")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        return f"{out_dir}: a file, not a folder; choose an empty or new {key}"
    names = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    theirs = [n for n in names if not _ours(os.path.join(out_dir, n))]
    if theirs:
        folders = [n + "/" for n in theirs if os.path.isdir(os.path.join(out_dir, n))]
        shown = folders + [n for n in theirs if n + "/" not in folders]
        what = " and ".join(f"{k} {w}{'s' * (k > 1)}" for k, w in
                            ((len(theirs) - len(folders), "file"), (len(folders), "folder")) if k)
        return (f"{out_dir}: holds {what} that no nano360 stage wrote "
                f"({', '.join(shown[:5])}{', ...' * (len(shown) > 5)}); "
                f"choose an empty or new {key}")
    other = json_dict(os.path.join(tmp, "plan.json")).get("stage", name)
    if other != name:
        return (f"{tmp}: holds the unfinished work of {other}, not of {name}; finish or delete "
                f"it, or choose another {key}")
    return None


# -----------------------------------------------------------------------------
# the lock

class Busy(Exception):
    """The lock is held by a live command; .holder (a dict, maybe empty) says which."""

    def __init__(self, holder):
        super().__init__(describe(holder))
        self.holder = holder


def command_id():
    """What identifies this command among the processes on a shared folder: the rendezvous
    (MASTER_ADDR, MASTER_PORT, run id) of torchrun or any launcher that sets RANK and
    WORLD_SIZE, the job of a Slurm array; a process alone is its own command (host and pid)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return "rendezvous " + " ".join(env.get(k, "?") for k in
                                        ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))
    if "SLURM_ARRAY_TASK_COUNT" in env:
        return "slurm array " + env.get("SLURM_ARRAY_JOB_ID", "?")
    return f"{socket.gethostname()} {os.getpid()}"


def describe(holder):
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"


def alive(holder):
    """Whether the holder is a live process of this host (one of another host: not known, no)."""
    try:
        if holder["host"] != socket.gethostname() or holder["pid"] == os.getpid():
            return False
        os.kill(holder["pid"], 0)
        return True
    except PermissionError:  # someone else's process: alive
        return True
    except (ProcessLookupError, KeyError, TypeError, ValueError, OverflowError):
        return False


class FileLock:
    """path flock-ed and naming this process; Busy when a live command holds it. taken_over:
    the holder of a lock that a command which died left, or None."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        holder = json_dict(path)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            busy = alive(holder)  # a filesystem where flock does not reach other hosts' locks
        except BlockingIOError:
            busy = True
        except OSError:  # no flock here (ENOLCK): the holder's pid is all there is
            busy = alive(holder)
        if busy:
            os.close(self.fd)
            raise Busy(holder)
        self.taken_over = holder or None
        mine = dict(host=socket.gethostname(), pid=os.getpid(), command=command_id(),
                    since=time.strftime("%Y-%m-%d %H:%M:%S"))
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(mine).encode(), 0)
        os.fsync(self.fd)

    def release(self, moved_to=None):
        """Let go: the file emptied (nobody holds it), or removed from moved_to, where the
        folder that held it went (a stage's output, renamed into place)."""
        if self.fd is None:
            return
        if moved_to:
            try:
                os.remove(moved_to)
            except FileNotFoundError:
                pass
        else:
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # and the flock with it
        self.fd = None
