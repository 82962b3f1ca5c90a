"""
Checkpoints you can trust: saved whole, checked on load, never running code from a file.

    out_dir/ckpt_{step:07d}/   .metadata, __{rank}_0.distcp (torch.distributed.checkpoint: model
                               and optimizer tensors, loadable at any world size), rng_{rank}.pt,
                               meta.json (config, git revision, data position, and the size and
                               sha256 of every other file), DONE (the sha256 of meta.json), last
    out_dir/LOCK               the run using out_dir: host, pid, since (held with flock)
    out_dir/superseded/        checkpoints set aside, never deleted: newer than the one a run
                               resumed from, or damaged, with the metrics.jsonl of that time

A checkpoint is written as .tmp_ckpt_* and renamed once complete, so a crash leaves the previous
one as it was. Loading unpickles nothing a checkpoint's files could choose: DCP's .metadata goes
through an allow-list of exact (module, name) pairs, non-tensor entries are refused (nano360 writes
none: the optimizer's hyperparameters come from the config), torch.load runs with weights_only.
The checksums catch a damaged or edited file (they are no signature: whoever can write the files
can write new sums).
"""
import json, os, pickle, random, re, shutil, time, warnings
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from config import ConfigError, config_from_dict
from guard import Busy, FileLock, describe
from model import GPT
from stage import DONE, DataError, commit_dir, is_done, sha256_file, tmp_dir

# one process saves and loads checkpoints through torch.distributed.checkpoint too, as intended
warnings.filterwarnings("ignore",
                        message="torch.distributed is disabled, unavailable or uninitialized")


class CheckpointError(DataError):
    """A checkpoint that cannot be saved or trusted: the message names the file and the cause."""


def barrier():
    if dist.is_initialized():
        dist.barrier()


def group_place():
    """(rank, world size) of this process in its process group, (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def gathered(mine):
    """The lists of every rank, concatenated in rank order (mine alone in one process)."""
    if not dist.is_initialized():
        return list(mine)
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, list(mine))
    return [x for part in every for x in part]


# -----------------------------------------------------------------------------
# loading that runs no code

_DCP = "torch.distributed.checkpoint."
# exactly what DCP's .metadata pickles (torch 2.5-2.13): no module-wide entry, no dotted name, so
# nothing reachable through an allowed module (protocol 4 resolves "a.b" attribute by attribute)
ALLOWED = {(_DCP + "metadata", n)
           for n in ("Metadata", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
                     "ChunkStorageMetadata", "TensorProperties", "StorageMeta",
                     "_MEM_FORMAT_ENCODING")}
ALLOWED |= {(_DCP + "filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
            ("torch", "Size"), ("collections", "OrderedDict"),
            ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
            ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath")}
ALLOWED |= {("torch", n) for n, v in vars(torch).items()
            if isinstance(v, (torch.dtype, torch.memory_format, torch.layout))}


class SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: "
                                     "not a class DCP's metadata holds")


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader, with .metadata read through SafeUnpickler (tensors it already reads
    with torch.load(weights_only=True))."""

    def read_metadata(self, *args, **kwargs):
        path = os.path.join(str(self.path), ".metadata")
        try:
            with open(path, "rb") as f:
                metadata = SafeUnpickler(f).load()
        except Exception as e:  # noqa: BLE001: a damaged pickle can raise almost anything
            raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path}: holds a {type(metadata).__name__}, not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = getattr(self, "load_id", None)
        return metadata


class TensorsOnly(DefaultLoadPlanner):
    """DCP's planner, refusing entries stored as pickled bytes (its default unpickles them with
    weights_only=False: any code)."""

    def __init__(self, reader):
        super().__init__()
        self.reader = reader

    def load_bytes(self, read_item, value):
        where = self.reader.storage_data[read_item.storage_index].relative_path
        raise CheckpointError(f"{os.path.join(str(self.reader.path), where)}: entry "
                              f"{read_item.dest_index.fqn!r} is pickled bytes, not a tensor; "
                              "nano360 never writes one and does not unpickle it")


def dcp_load(state, path):
    """dcp.load of state from path, safely; any failure a CheckpointError naming the file."""
    reader = SafeReader(path)
    reader.read_metadata()  # here, so that its error is ours (DCP rewords it)
    try:
        dcp.load(state, storage_reader=reader, planner=TensorsOnly(reader))
    except CheckpointException as e:  # one per rank: the first says what went wrong
        first = next(iter(e.failures.values()))[0]
        raise (first if isinstance(first, CheckpointError) else
               CheckpointError(f"{path}: could not be read ({type(first).__name__}: "
                               f"{str(first)[:300]})")) from None
    except (RuntimeError, ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{path}: could not be read ({type(e).__name__}: "
                              f"{str(e)[:300]})") from None


def tensors_only(state, where=""):
    """Refuse to save a state that DCP would pickle (any leaf not a tensor)."""
    for k, v in state.items():
        if isinstance(v, dict):
            tensors_only(v, f"{where}{k}.")
        elif not isinstance(v, torch.Tensor):
            raise CheckpointError(f"state entry {where}{k} is a {type(v).__name__}, not a tensor: "
                                  "DCP would pickle it, and loading refuses pickles")


def rng_state():
    np_state = np.random.get_state()
    return dict(torch=torch.get_rng_state(), python=random.getstate(),
                numpy=[np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_rng_state(path):
    try:
        s = torch.load(path, weights_only=True)
        torch.set_rng_state(s["torch"])
        random.setstate(s["python"])
        np.random.set_state((s["numpy"][0], s["numpy"][1].numpy().astype(np.uint32),
                             *s["numpy"][2:]))
    except Exception as e:  # noqa: BLE001: weights_only refusals, truncation, a wrong layout
        raise CheckpointError(f"{path}: not a random-number state nano360 wrote "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# -----------------------------------------------------------------------------
# checksums: every file in meta.json, meta.json's in DONE

def file_sums(folder):
    """{name: {bytes, sha256}} of folder's files but meta.json and DONE, the hashing shared by
    the ranks."""
    names = sorted(n for n in os.listdir(folder) if n not in ("meta.json", DONE))
    rank, world = group_place()
    mine = [(n, dict(bytes=os.path.getsize(os.path.join(folder, n)),
                     sha256=sha256_file(os.path.join(folder, n))))
            for n in names[rank::world]]
    return dict(sorted(gathered(mine)))


def damage(path):
    """None when path is a complete checkpoint whose files all match meta.json; else what is
    wrong, naming the file (every rank gets the same answer)."""
    try:
        meta = read_meta(path)
    except (DataError, ConfigError) as e:
        return str(e)
    named = step_of(path)  # runs, retention and sweeps go by the step: name and meta must agree
    if named is not None and named != meta["step"]:
        return (f"{path}: its meta.json says step {meta['step']}, its name says {named} "
                "(renamed or copied by hand?); not used")
    files = meta.get("files", {})  # older checkpoints recorded none
    rank, world = group_place()
    problems = []
    for name in sorted(files)[rank::world]:
        p, want = os.path.join(path, name), files[name]
        size = os.path.getsize(p) if os.path.isfile(p) else None
        if size is None:
            problems.append(f"{p}: missing")
        elif size != want["bytes"]:
            problems.append(f"{p}: {size} bytes, meta.json recorded {want['bytes']} "
                            "(truncated or damaged)")
        elif sha256_file(p) != want["sha256"]:
            problems.append(f"{p}: sha256 differs from the one meta.json recorded "
                            "(the file is damaged)")
    problems = gathered(problems)
    if not problems:
        return None
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


def write_probe(folder, size=1 << 20):
    """Why writing to folder fails (the OS's words: No space left on device, File too large), or
    None when a MiB goes in."""
    path = os.path.join(folder, f".probe_{os.getpid()}")
    try:
        with open(path, "wb") as f:
            f.write(bytes(size))
            f.flush()
            os.fsync(f.fileno())
        return None
    except OSError as e:
        return e.strerror or str(e)
    finally:
        if os.path.exists(path):
            os.remove(path)


def step_of(path):
    """The step a checkpoint folder's name ends in (ckpt_0000400, or a released model's ckpt_359);
    None when it ends in no number."""
    m = re.search(r"(\d+)$", os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def read_meta(ckpt):
    """meta.json of a complete checkpoint: the run's config, the step, the data position, the
    manifest's sha256, the sums of the other files; checked against the sha256 that DONE holds
    (older checkpoints have an empty DONE)."""
    if not os.path.isdir(ckpt):
        raise ConfigError(f"checkpoint not found: {ckpt}")
    if not is_done(ckpt):
        raise ConfigError(f"{ckpt}: not a complete checkpoint (no {DONE} marker)")
    path = os.path.join(ckpt, "meta.json")
    try:
        done = open(os.path.join(ckpt, DONE)).read().strip()
        want = json.loads(done)["meta.json"] if done else None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{os.path.join(ckpt, DONE)}: unreadable ({e}): "
                        "the checkpoint is damaged") from None
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing: the checkpoint is damaged")
    if want and sha256_file(path) != want:
        raise DataError(f"{path}: sha256 differs from the one {DONE} recorded "
                        "(the file is damaged or was edited)")
    try:
        meta = json.load(open(path))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or not {"step", "config"} <= meta.keys():
        raise DataError(f"{path}: not a checkpoint's meta.json (no step and config)")
    return meta


def config_of(path, meta):
    """(TrainConfig, ModelConfig) that the checkpoint at path trained with (its meta.json)."""
    return config_from_dict(meta["config"], f"{os.path.join(path, 'meta.json')} (written by "
                                            f"nano360 {str(meta.get('git', 'unknown'))[:12]})")


# -----------------------------------------------------------------------------
# the out_dir lock

def run_file(out_dir, name):
    """out_dir/name, a file or folder of the run's own: a symbolic link there (a copied or
    planted run folder) would send our writes elsewhere, so it is an error."""
    path = os.path.join(out_dir, name)
    if os.path.islink(path):
        raise CheckpointError(f"{path} is a symbolic link (to {os.readlink(path)}): a run writes "
                              "only its own files; remove the link, or choose another out_dir")
    return path


def check_run_dir(out_dir):
    """out_dir is new, or empty, or a run's (a LOCK, metrics.jsonl or a checkpoint in it): a
    run never writes into a folder of something else (data, a typo)."""
    names = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    ours = [n for n in names if n in ("LOCK", "metrics.jsonl") or re.fullmatch(r"ckpt_\d+", n)]
    if names and not ours:
        shown = ", ".join(n + "/" * os.path.isdir(os.path.join(out_dir, n)) for n in names[:4])
        raise ConfigError(f"out_dir={out_dir} holds {len(names)} "
                          f"entr{'ies' if len(names) > 1 else 'y'} that no nano360 run "
                          f"wrote ({shown}{', ...' if len(names) > 4 else ''}): "
                          "choose a new or empty out_dir")


class RunLock:
    """out_dir/LOCK (guard.FileLock), held by the one run using out_dir and naming it. A lock
    left by a run that died is taken over with a message; a live one is a one-line error.
    out_dir must be new, empty or a run's (check_run_dir)."""

    def __init__(self, out_dir):
        check_run_dir(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        self.path = run_file(out_dir, "LOCK")
        try:
            self.lock = FileLock(self.path)
        except Busy as e:
            raise CheckpointError(f"{out_dir} is in use by another run ({e}; {self.path}): "
                                  "wait for it to end or choose another out_dir; "
                                  f"if no run is using it, delete {self.path}") from None
        if self.lock.taken_over:
            print(f"{self.path}: taking over the lock of a run that is gone "
                  f"({describe(self.lock.taken_over)})")

    def release(self):
        self.lock.release()  # an empty LOCK: nobody holds it

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


# -----------------------------------------------------------------------------
# saving, retention, loading

class Checkpointer:
    """Saves and loads out_dir's checkpoints (every rank calls it). The newest keep_last
    complete checkpoints stay, and every keep_every-th; a checkpoint is deleted by renaming it
    first (.del_*), so a crash while pruning never leaves a complete-looking folder without its
    data."""

    def __init__(self, out_dir, rank=0, keep_last=2, keep_every=0, async_save=False):
        self.out_dir, self.rank = out_dir, rank
        self.keep_last, self.keep_every = keep_last, keep_every
        self.async_save, self.pending = async_save, None

    @staticmethod
    def complete(out_dir):
        """The complete checkpoints in out_dir (DONE), oldest first."""
        if not os.path.isdir(out_dir):
            return []
        found = [os.path.join(out_dir, d) for d in os.listdir(out_dir)
                 if d.startswith("ckpt_") and d[5:].isdigit()]
        return sorted((p for p in found if is_done(p)), key=step_of)

    @staticmethod
    def newest(out_dir):
        done = Checkpointer.complete(out_dir)
        return done[-1] if done else None

    def save(self, step, model, optimizer, meta):
        """Every rank writes its shards and its RNG; then (wait(), at once without async_save)
        the checksums, meta.json, DONE, the rename and the pruning. A failure (a full disk)
        removes the partial folder and names it, the cause, and the checkpoint still there."""
        self.wait()
        final = os.path.join(self.out_dir, f"ckpt_{step:07d}")
        tmp = tmp_dir(final, create=self.rank == 0)
        barrier()
        msd, osd = get_state_dict(model, optimizer)
        # param_groups are hyperparameters: the config has them
        state = dict(model=msd, optim=dict(state=osd["state"]))
        tensors_only(state)
        with self._failing(tmp, step):
            torch.save(rng_state(), os.path.join(tmp, f"rng_{self.rank}.pt"))
            if self.async_save:
                self.pending = dcp.async_save(state, checkpoint_id=tmp), tmp, final, meta, step
                return final
            dcp.save(state, checkpoint_id=tmp)
        self._finish(tmp, final, meta, step)
        return final

    def wait(self):
        if self.pending:
            (future, tmp, final, meta, step), self.pending = self.pending, None
            with self._failing(tmp, step):
                future.result()
            self._finish(tmp, final, meta, step)

    @contextmanager
    def _failing(self, tmp, step):
        try:
            yield
        except (OSError, RuntimeError, CheckpointException) as e:
            # DCP's wrapper of each rank's error: the first says why
            if isinstance(e, CheckpointException):
                e = next(iter(e.failures.values()))[0]
            shutil.rmtree(tmp, ignore_errors=True)  # the space it took, back
            free = shutil.disk_usage(self.out_dir).free
            cause = (e.strerror if isinstance(e, OSError) and e.strerror
                     else " ".join(str(e).split())[:200])
            # torch's writers say "unexpected pos 704 vs 598": find the cause
            probe = write_probe(self.out_dir)
            cause = f"{probe} ({cause})" if probe and probe != cause else cause
            prev = Checkpointer.newest(self.out_dir)
            intact = "the checkpoint " + prev + " is intact" if prev else "no checkpoint yet"
            raise CheckpointError(f"saving step {step} to {tmp} failed: {cause} "
                                  f"({free / 2**30:.2f} GiB free on that disk); {intact}: "
                                  "make room, then --resume=auto") from None

    def _finish(self, tmp, final, meta, step):
        barrier()  # every rank's files are written
        with self._failing(tmp, step):
            meta = dict(meta, files=file_sums(tmp))
            if self.rank == 0:
                with open(os.path.join(tmp, "meta.json"), "w") as f:
                    json.dump(meta, f, indent=1)
                commit_dir(tmp, final, done=json.dumps(
                    {"meta.json": sha256_file(os.path.join(tmp, "meta.json"))}))
        if self.rank == 0:
            self.prune()
        barrier()

    def prune(self):
        """Keep the newest keep_last complete checkpoints and every keep_every-th; remove the
        leftovers of killed saves and prunes."""
        done = self.complete(self.out_dir)
        keep = (set(done[-self.keep_last:])
                | {d for d in done if self.keep_every and step_of(d) % self.keep_every == 0})
        for d in done:
            if d not in keep:
                trash = os.path.join(self.out_dir, ".del_" + os.path.basename(d))
                os.replace(d, trash)  # no longer complete-looking, at once
                shutil.rmtree(trash)
        for d in os.listdir(self.out_dir):
            if d.startswith((".tmp_ckpt_", ".del_ckpt_")):
                shutil.rmtree(os.path.join(self.out_dir, d), ignore_errors=True)

    def set_aside(self, paths, why):
        """Move checkpoints (and a copy of metrics.jsonl) into out_dir/superseded/: kept, but no
        longer part of the run (rank 0)."""
        if not paths or self.rank != 0:
            return
        dest = run_file(self.out_dir, "superseded")
        os.makedirs(dest, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        metrics = run_file(self.out_dir, "metrics.jsonl")
        if os.path.exists(metrics):
            shutil.copy2(metrics, os.path.join(dest, f"metrics.{stamp}.jsonl"))
        for p in paths:
            target = os.path.join(dest, os.path.basename(p))
            target = target if not os.path.exists(target) else f"{target}.{stamp}"
            os.replace(p, target)
        print(f"set aside in {dest} ({why}): {', '.join(os.path.basename(p) for p in paths)}")

    def good_newest(self):
        """The newest checkpoint that verifies (for --resume=auto); damaged newer ones are set
        aside, and said so. None when out_dir has none; an error when it has only damaged ones."""
        damaged = []
        for path in reversed(self.complete(self.out_dir)):
            problem = damage(path)
            if problem is None:
                if damaged:
                    if self.rank == 0:
                        print(f"warning: {problem_list(damaged)}; resuming from {path}, "
                              "the newest good checkpoint")
                    barrier()
                    self.set_aside([p for p, _ in damaged], "damaged")
                    barrier()
                return path
            damaged.append((path, problem))
        if damaged:
            raise CheckpointError(f"no good checkpoint in {self.out_dir}: {problem_list(damaged)}")
        return None

    def load(self, path, model, optimizer=None, checked=False):
        """The model's (and optimizer's) state from path after damage() found none (checked: it
        was asked already), at any world size (DCP reshards); with an optimizer also this rank's
        RNG, when the checkpoint has one (a rank new after a change of world size keeps its
        seed). The one way checkpoints are read."""
        problem = None if checked else damage(path)
        if problem:
            raise CheckpointError(problem)
        meta = read_meta(path)
        if "files" not in meta and self.rank == 0:
            print(f"warning: {path} was written before checkpoints recorded checksums: "
                  "loaded unverified")
        if optimizer is None:
            state = {"model": model.state_dict()}
            dcp_load(state, path)
            model.load_state_dict(state["model"])
            return meta
        msd, osd = get_state_dict(model, optimizer)
        state = dict(model=msd, optim=dict(state=osd["state"]))
        dcp_load(state, path)
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=dict(osd, state=state["optim"]["state"]))
        rng = os.path.join(path, f"rng_{self.rank}.pt")
        if os.path.exists(rng):
            set_rng_state(rng)
        return meta


def problem_list(damaged):
    return "; ".join(f"{os.path.basename(p)} is damaged ({why})" for p, why in damaged)


# -----------------------------------------------------------------------------
# a checkpoint's model in one process: evaluation, export, --consolidate

def load_model(path, device="cpu"):
    """(model in eval mode, TrainConfig, meta) of a checkpoint written at any world size: only the
    model's entries are read."""
    cfg, mcfg = config_of(path, read_meta(path))
    model = empty_model(mcfg, device)
    meta = Checkpointer(os.path.dirname(path)).load(path, model)
    return model.eval(), cfg, meta


def empty_model(mcfg, device):
    """A model of mcfg on device for weights about to be loaded: built on the meta device, then
    given memory and its buffers (init_weights)."""
    with torch.device("meta"):
        model = GPT(mcfg)
    model.to_empty(device=device)
    model.init_weights(0)
    return model


def consolidate(path, out=None):
    """One ordinary state dict file of a checkpoint's model (for evaluation and export)."""
    model, _, _ = load_model(path)
    out = out or os.path.join(path, "model_consolidated.pt")
    torch.save(model.state_dict(), out)
    print(f"wrote {out}: {model.num_params():,} parameters in {len(model.state_dict())} tensors")
    return out
