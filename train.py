"""
Train a nano360 model: config -> model -> data -> loop -> checkpoints.

    python train.py                                     the toy model on data/tiny (config/toy.py), minutes on a CPU
    python train.py config/neo7b.py --dry_run --world_size=64    parameters, FLOPs and memory per GPU
    python train.py config/toy.py --max_steps=200 --out_dir=out/short --resume=auto

A config file is plain Python assignments; --key=value overrides it. Every field of
TrainConfig below and of model.ModelConfig is a key.
"""
import ast, datetime, difflib, functools, json, math, os, pickle, random, shutil, signal, subprocess, sys, time, typing, warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from tqdm import tqdm

import data
from model import GPT, HAVE_TRITON, ModelConfig

HERE = os.path.dirname(os.path.abspath(__file__))
# one process saves and loads checkpoints through torch.distributed.checkpoint too, as intended
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
DEFAULT_CONFIG = os.path.join(HERE, "config", "toy.py")


@dataclass
class TrainConfig:
    # run
    out_dir: str = "out/toy"
    seed: int = 1337
    device: str = "auto"         # auto (cuda when there is one), cpu, cuda, cuda:N
    dtype: str = "auto"          # auto (bfloat16 autocast on cuda, float32 on cpu), float32, bfloat16
    compile: bool = False
    dry_run: bool = False        # print parameters, FLOPs and memory per GPU, then exit; needs no GPU
    world_size: int = 1          # the number of GPUs dry_run plans for (a run takes torchrun's)
    # many GPUs: torchrun starts one process per GPU; FSDP2 shards parameters, gradients and AdamW state
    fsdp: str = "full"           # full: shard over all ranks; hsdp: shard within a node, replicate across nodes
    ac: str = "none"             # activation checkpointing: none, full, selective (keep matmul outputs), every:N
    dist_timeout: int = 600      # seconds a collective waits for a dead or stuck rank before the job fails
    async_ckpt: bool = False     # write checkpoints in the background while training goes on
    max_bad_steps: int = 5       # steps in a row with a NaN/inf loss (each skipped) before the run stops
    # data pipeline (python data.py fetch-demo | clean | dedup | train-tokenizer | tokenize):
    # source_dir -> clean -> clean_dir -> dedup -> raw_data -> tokenize -> data_dir
    source_dir: str = ""         # documents as fetched
    clean_dir: str = ""          # documents that passed the cleaning rules
    clean_rules: dict = field(default_factory=dict)  # {lang: {rule: threshold}} over data.CLEAN_RULES
    tokenizer_sample: int = 50_000_000  # characters train-tokenizer learns from, drawn across sources
    # data: raw_data is prepared into data_dir on first use
    raw_data: str = "data/tiny"
    data_dir: str = "data/tiny/tokens"
    tokenizer: str = "bpe"       # "bpe" (train one on raw_data), a .tiktoken path, or a tiktoken name
    tokenizer_vocab: int = 4096  # BPE vocabulary when tokenizer="bpe" (special tokens come on top)
    val_frac: float = 0.05       # the last val_frac of each source's tokens is held out
    verify_data: bool = True     # sha256 every shard at start (turn off for terabytes)
    # batch
    seq_len: int = 256
    batch_size: int = 16         # sequences per micro-batch per rank
    global_batch_size: int = 0   # sequences per optimizer step over all ranks; 0: batch_size x ranks
    doc_mask: bool = False       # packed documents do not attend to each other (split at end-of-text)
    mixture: list = field(default_factory=list)  # [(start_step, {source: weight}), ...] phases; []: all data alike
    fim_rate: float = 0.0        # fill-in-the-middle: the share of documents of fim_sources rearranged (CrystalCoder 0.9)
    fim_spm_rate: float = 0.5    # of those, the share in suffix-prefix-middle order
    fim_sources: list = field(default_factory=lambda: ["code"])
    # optimizer
    optimizer: str = "auto"      # adamw_triton (kernels/adamw.py, CUDA), adamw_torch, auto: triton on CUDA
    optim_state_dtype: str = "float32"  # AdamW moments; bfloat16 (adamw_triton only) saves 4 bytes per parameter
    lr: float = 3e-3
    min_lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    weight_decay_all: bool = False  # decay every parameter (Amber), not only the matrices
    grad_clip: float = 1.0          # 0: no clipping
    # schedule: linear warmup, then cosine | linear | wsd | cosine_exp (MAP-Neo: cosine, then exponential decay)
    schedule: str = "cosine"
    max_steps: int = 1000
    warmup_steps: int = 50
    schedule_steps: int = 0      # the step at which cosine / linear reach min_lr; 0: max_steps
    decay_steps: int = 0         # wsd, cosine_exp: the last decay_steps steps are the decay phase
    # evaluation, logging, checkpoints
    eval_interval: int = 100     # validation loss per source every eval_interval steps (and first and last)
    eval_seqs: int = 0           # validation sequences per source; 0: all
    log_interval: int = 10
    ckpt_interval: int = 500
    keep_last: int = 2           # complete checkpoints kept, besides every keep_every-th
    keep_every: int = 0
    resume: str = "auto"         # auto: newest complete checkpoint in out_dir; "": fresh; or a checkpoint dir
    init_from: str = ""          # a fresh run starts from these weights (eval.py import of a Llama, or --consolidate)
    sample_tokens: int = 64      # tokens sampled per prompt at the end; 0: no samples

    def __post_init__(self):
        checks = [
            (self.schedule in ("cosine", "linear", "wsd", "cosine_exp"), f"schedule={self.schedule!r} must be cosine, linear, wsd or cosine_exp"),
            (self.schedule not in ("wsd", "cosine_exp") or 0 < self.decay_steps <= self.max_steps,
             f"schedule={self.schedule!r} needs 0 < decay_steps <= max_steps, got decay_steps={self.decay_steps}"),
            (self.optimizer in ("auto", "adamw_triton", "adamw_torch"),
             f"optimizer={self.optimizer!r} must be auto, adamw_triton or adamw_torch"),
            (self.optim_state_dtype in ("float32", "bfloat16"), f"optim_state_dtype={self.optim_state_dtype!r} must be float32 or bfloat16"),
            (self.fsdp in ("full", "hsdp"), f"fsdp={self.fsdp!r} must be full or hsdp"),
            (self.ac in ("none", "full", "selective") or self.ac.startswith("every:") and self.ac[6:].isdigit()
             and int(self.ac[6:]) > 0, f"ac={self.ac!r} must be none, full, selective or every:N (N >= 1)"),
            (self.dtype in ("auto", "float32", "bfloat16"), f"dtype={self.dtype!r} must be auto, float32 or bfloat16"),
            (min(self.seq_len, self.batch_size, self.max_steps, self.world_size) > 0,
             "seq_len, batch_size, max_steps and world_size must be positive"),
            (self.global_batch_size >= 0 and min(self.eval_interval, self.log_interval, self.ckpt_interval, self.keep_last) > 0,
             "global_batch_size must be >= 0 and eval_interval, log_interval, ckpt_interval, keep_last positive"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


# -----------------------------------------------------------------------------
# config: files of plain assignments, then --key=value overrides

class ConfigError(Exception):
    """A bad config: the message names the file and line (or the flag), the key and what was expected."""


class TrainingError(Exception):
    """A run that cannot go on (too many NaN losses): the message names the step."""


def key_types():
    types = {}
    for cls in (ModelConfig, TrainConfig):
        hints = typing.get_type_hints(cls)
        types.update({f.name: (cls, hints[f.name]) for f in fields(cls)})
    return types


def check_key(key, where, types):
    if key not in types:
        near = difflib.get_close_matches(key, types, n=1, cutoff=0.0)
        raise ConfigError(f"{where}: unknown key '{key}' (did you mean '{near[0]}'?)")


def check_value(key, value, typ, where):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}: {key} = {value!r} is {type(value).__name__}, expected {typ.__name__}")


def parse_flag(raw, typ):
    if typ is str:
        return raw
    if typ is bool and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
        return raw.lower() in ("true", "1", "yes")
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # reported by check_value as the wrong type


def read_config_file(path, types):
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    src = open(path, encoding="utf-8").read()
    try:
        tree = ast.parse(src, path)
    except SyntaxError as e:
        raise ConfigError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    lines = {t.id: node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}
    namespace = {}
    try:
        exec(compile(tree, path, "exec"), namespace)
    except Exception as e:
        tb = e.__traceback__
        while tb.tb_next:
            tb = tb.tb_next
        raise ConfigError(f"{path}:{tb.tb_lineno}: {type(e).__name__}: {e}") from None
    values = {}
    for key, value in namespace.items():
        if key.startswith("_") or callable(value) or type(value).__name__ == "module":
            continue
        where = f"{path}:{lines.get(key, '?')}"
        check_key(key, where, types)
        values[key] = (value, where)
    return values


def load_config(argv):
    """[config.py] [--key=value ...] -> (TrainConfig, ModelConfig); config/toy.py when no file is given."""
    types = key_types()
    argv = list(argv)
    path = argv.pop(0) if argv and not argv[0].startswith("-") else DEFAULT_CONFIG
    values = read_config_file(path, types)
    for arg in argv:
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: give one config file first, then --key=value overrides")
        key, eq, raw = arg[2:].partition("=")
        check_key(key, arg, types)
        if not eq and types[key][1] is not bool:
            raise ConfigError(f"{arg}: needs a value, as in --{key}=VALUE")
        values[key] = (parse_flag(raw, types[key][1]) if eq else True, arg)
    parts = {ModelConfig: {}, TrainConfig: {}}
    for key, (value, where) in values.items():
        cls, typ = types[key]
        parts[cls][key] = check_value(key, value, typ, where)
    try:
        return TrainConfig(**parts[TrainConfig]), ModelConfig(**parts[ModelConfig])
    except ValueError as e:
        raise ConfigError(f"{path} with {' '.join(argv) or 'no overrides'}: {e}") from None


def global_batch(cfg, world_size):
    """Sequences per optimizer step over all ranks."""
    return cfg.global_batch_size or cfg.batch_size * world_size


def config_from_dict(d):
    return TrainConfig(**d["train"]), ModelConfig(**d["model"])


# -----------------------------------------------------------------------------
# schedule

def lr_at(step, cfg):
    """Learning rate of step (0-based): linear warmup to lr, then cfg.schedule down to min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = cfg.max_steps - cfg.decay_steps
    if cfg.schedule == "wsd":  # warmup, stable, then a linear decay over the last decay_steps
        return cfg.lr if step < decay_start else cfg.lr + (cfg.min_lr - cfg.lr) * (step - decay_start + 1) / cfg.decay_steps
    if cfg.schedule == "cosine_exp" and step > decay_start:  # MAP-Neo's decay phase: half-life decay_steps / 2
        return max(cfg.min_lr, lr_at(decay_start, cfg) * 0.5 ** ((step - decay_start) / (cfg.decay_steps / 2)))
    horizon = cfg.schedule_steps or cfg.max_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, horizon - cfg.warmup_steps))
    if cfg.schedule == "linear":
        return cfg.lr + (cfg.min_lr - cfg.lr) * progress
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


# -----------------------------------------------------------------------------
# checkpoints: out_dir/ckpt_{step:07d}/ holds model and optimizer state through
# torch.distributed.checkpoint (one file per rank, loadable at any world size), rng_{rank}.pt,
# meta.json and DONE; written as .tmp_ckpt_* and renamed when complete; loading runs no code
# from the files

def complete_checkpoints(out_dir):
    """The complete checkpoints in out_dir, oldest first."""
    return sorted(os.path.join(out_dir, d) for d in os.listdir(out_dir) if d.startswith("ckpt_") and
                  os.path.exists(os.path.join(out_dir, d, "DONE"))) if os.path.isdir(out_dir) else []


def find_checkpoint(out_dir):
    """The newest complete checkpoint in out_dir, or None."""
    done = complete_checkpoints(out_dir)
    return done[-1] if done else None


def read_checkpoint_meta(path):
    if not os.path.isdir(path):
        raise ConfigError(f"checkpoint not found: {path}")
    if not os.path.exists(os.path.join(path, "DONE")):
        raise ConfigError(f"{path}: not a complete checkpoint (no DONE marker)")
    return json.load(open(os.path.join(path, "meta.json")))


def rng_state():
    np_state = np.random.get_state()
    return dict(torch=torch.get_rng_state(), python=random.getstate(),
                numpy=[np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state((s["numpy"][0], s["numpy"][1].numpy().astype(np.uint32), *s["numpy"][2:]))
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


class SafeMetadata(pickle.Unpickler):
    """DCP's .metadata is a pickle, which can run code: allow only the classes DCP writes."""
    def find_class(self, module, name):
        if module in ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem") or \
                (module, name) in (("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("torch", "Size"),
                                   ("torch.serialization", "_get_layout"), ("collections", "OrderedDict")) or \
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint's .metadata")


def check_metadata(path):
    """Read a checkpoint's .metadata with SafeMetadata before DCP unpickles it for real."""
    with open(os.path.join(path, ".metadata"), "rb") as f:
        SafeMetadata(f).load()


def barrier():
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(out_dir, step, model, optimizer, meta, keep_last=2, keep_every=0, rank=0, pending=None):
    """Every rank writes its shards and its RNG; rank 0 then adds meta.json and DONE and renames.
    With pending (a list), the shards are written in the background (dcp.async_save) and
    finish_checkpoint() completes the save later."""
    final = os.path.join(out_dir, f"ckpt_{step:07d}")
    tmp = os.path.join(out_dir, f".tmp_ckpt_{step:07d}")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    msd, osd = get_state_dict(model, optimizer)
    torch.save(rng_state(), os.path.join(tmp, f"rng_{rank}.pt"))
    if pending is not None:
        pending.append((dcp.async_save(dict(model=msd, optim=osd), checkpoint_id=tmp), tmp, final, meta,
                        keep_last, keep_every, rank))
        return final
    dcp.save(dict(model=msd, optim=osd), checkpoint_id=tmp)
    return finish_checkpoint(tmp, final, meta, keep_last, keep_every, rank)


def finish_checkpoint(tmp, final, meta, keep_last, keep_every, rank, future=None):
    if future is not None:
        future.result()
    barrier()  # every rank's files are written
    if rank == 0:
        out_dir = os.path.dirname(final)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        for name in os.listdir(tmp):  # on disk before DONE and the rename, so a power cut cannot reorder them
            with open(os.path.join(tmp, name), "rb+") as f:
                os.fsync(f.fileno())
        open(os.path.join(tmp, "DONE"), "w").close()  # last file: its presence means the rest is complete
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        complete = sorted(d for d in os.listdir(out_dir) if d.startswith("ckpt_"))
        for d in complete[:-keep_last or None]:
            if not (keep_every and int(d[5:]) % keep_every == 0):
                shutil.rmtree(os.path.join(out_dir, d))
        for d in os.listdir(out_dir):  # leftovers of saves that were killed
            if d.startswith(".tmp_ckpt_") and os.path.join(out_dir, d) != tmp:
                shutil.rmtree(os.path.join(out_dir, d), ignore_errors=True)
    barrier()
    return final


def finish_pending(pending):
    while pending:
        future, *rest = pending.pop(0)
        finish_checkpoint(*rest, future=future)


def load_checkpoint(path, model, optimizer, rank=0):
    """Model and optimizer state at any world size (DCP reshards), and this rank's RNG when the
    checkpoint has one (a rank that is new after a change of world size keeps its seed)."""
    meta = read_checkpoint_meta(path)
    check_metadata(path)
    msd, osd = get_state_dict(model, optimizer)
    state = dict(model=msd, optim=osd)
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng = os.path.join(path, f"rng_{rank}.pt")
    if os.path.exists(rng):
        set_rng_state(torch.load(rng, weights_only=True))
    return meta


def consolidate(ckpt, out=None):
    """One file with the full model state dict (for evaluation and export), from a checkpoint
    written at any world size; reads only the model's entries."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
    read_checkpoint_meta(ckpt)
    check_metadata(ckpt)
    state = {}
    _load_state_dict(state, storage_reader=dcp.FileSystemReader(ckpt), planner=_EmptyStateDictLoadPlanner(keys={"model"}),
                     no_dist=True)
    out = out or os.path.join(ckpt, "model_consolidated.pt")
    torch.save(state["model"], out)
    print(f"wrote {out}: {sum(t.numel() for t in state['model'].values()):,} parameters in {len(state['model'])} tensors")
    return out


def git_revision():
    run = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        rev = run("rev-parse", "HEAD")
        return (rev + ("-dirty" if run("status", "--porcelain", "--untracked-files=no") else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -----------------------------------------------------------------------------
# the pieces of a run

# ops whose outputs selective activation checkpointing keeps (the rest is recomputed)
KEEP = {"aten::mm", "aten::addmm", "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_cudnn_attention",
        "aten::_scaled_dot_product_efficient_attention", "nano360::flash_attn_fwd"}


def keep_matmuls(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy
    return CheckpointPolicy.MUST_SAVE if op.name() in KEEP else CheckpointPolicy.PREFER_RECOMPUTE


def recomputed(forward, selective):
    """forward with its activations recomputed in the backward (all of them, or all but the
    matmul outputs). A plain function around the checkpoint, so that torch.compile traces it."""
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts
    extra = dict(context_fn=functools.partial(create_selective_checkpoint_contexts, keep_matmuls)) if selective else {}

    def run(*args):
        return checkpoint(forward, *args, use_reentrant=False, **extra)
    return run


def build_model(mcfg, device, seed, cfg=None, mesh=None, bf16=False):
    """The torchtitan order: the model on the meta device, activation checkpointing and compile
    per block (cfg), FSDP2 per block then the root (mesh), and only then memory and
    init_weights(), which gives the same weights at any world size."""
    with torch.device("meta"):
        model = GPT(mcfg)
    for i, block in enumerate(model.blocks if cfg else []):
        every = int(cfg.ac[6:]) if cfg.ac.startswith("every:") else 1
        if cfg.ac != "none" and i % every == 0:
            block.forward = recomputed(block.forward, cfg.ac == "selective")
        if cfg.compile:
            block.compile()
    if mesh is not None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
        for block in model.blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
    model.to_empty(device=device)
    model.init_weights(seed)
    return model


def setup_distributed(cfg):
    """(rank, world_size, device, mesh): torchrun's environment, or one process without it."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = cfg.device.startswith("cuda") or cfg.device == "auto" and torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if cuda and world_size > 1 else "cuda" if cuda else cfg.device if
                          cfg.device != "auto" else "cpu")
    if world_size == 1:
        return rank, world_size, device, None
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=cfg.dist_timeout))
    from torch.distributed.device_mesh import init_device_mesh
    if cfg.fsdp == "hsdp":  # replicate across nodes, shard within one
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if world_size % per_node:
            raise ConfigError(f"fsdp='hsdp' needs the same number of ranks on every node ({world_size} over {per_node})")
        mesh = init_device_mesh(device.type, (world_size // per_node, per_node), mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (world_size,), mesh_dim_names=("shard",))
    return rank, world_size, device, mesh


def padded_vocab(n_vocab):
    return (n_vocab + 63) // 64 * 64


def peak_flops(device):
    # dense bf16 peak per GPU from the datasheets, for MFU
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40", 362e12), ("4090", 165e12)):
        if key in name:
            return flops
    return 0.0


@torch.no_grad()
def evaluate(model, val, batch_size, device, autocast, eot=None):
    """Mean validation loss per source, and over all tokens as 'all'. eot: mask attention at
    document boundaries."""
    model.eval()
    out, total = {}, 0.0
    for source, seqs in val.items():
        loss = 0.0
        for i in range(0, len(seqs), batch_size):
            x = torch.from_numpy(seqs[i:i + batch_size]).to(device)
            with autocast:
                docs = data.doc_ids(x[:, :-1], eot) if eot is not None else None
                loss += model(x[:, :-1], x[:, 1:], doc_ids=docs).item() * len(x)
        out[source] = loss / len(seqs)
        total += loss
    out["all"] = total / sum(len(s) for s in val.values())
    model.train()
    return out


def fmt_time(s):
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m" if s >= 3600 else f"{int(s // 60)}m{int(s % 60):02d}s"


def prepare_data(cfg):
    manifest_path = os.path.join(cfg.data_dir, "manifest.json")
    if not os.path.exists(manifest_path):
        if not os.path.exists(cfg.raw_data):
            raise data.DataError(f"{manifest_path} does not exist and raw_data={cfg.raw_data!r} is not there to prepare it from")
        print(f"preparing {cfg.data_dir} from {cfg.raw_data} (once)")
        data.prepare(cfg.raw_data, cfg.data_dir, cfg.tokenizer, cfg.tokenizer_vocab, cfg.val_frac)
    manifest = data.load_manifest(cfg.data_dir, verify=cfg.verify_data)
    stale = [f"{k}={v!r} (config: {getattr(cfg, k)!r})" for k, v in manifest["prepared_with"].items() if getattr(cfg, k) != v]
    if stale:
        print(f"warning: {manifest_path} was prepared with {', '.join(stale)}; using it as it is "
              "(`python data.py prepare` rebuilds it)", file=sys.stderr)
    return manifest


# -----------------------------------------------------------------------------
# dry run: the plan of a run, in seconds, without a GPU

def memory_plan(model, cfg):
    """Estimated bytes per GPU under FSDP2 full sharding over cfg.world_size GPUs, bf16 compute
    with fp32 master weights, gradients and AdamW state."""
    m, ws, N = model.cfg, cfg.world_size, model.num_params()
    block = sum(p.numel() for p in model.blocks[0].parameters())
    root = N - m.n_layer * block
    tokens = cfg.batch_size * cfg.seq_len
    # saved for backward per token and layer, bf16: two norm inputs and outputs, q k v and the
    # attention output, the MLP's gate|up output, silu(gate) and the product fed to down
    per_layer = 2 * (4 * m.d_model + (2 * m.n_head + 2 * m.n_kv_head) * m.head_dim + 4 * m.ffn_hidden) + 4 * m.n_head
    logits = 10 * m.vocab_size  # bf16 logits, their fp32 copy and the saved log-softmax
    return {
        "params fp32 (shard)": 4 * N / ws,
        "grads fp32 (shard)": 4 * N / ws,
        f"AdamW m, v {'bf16' if cfg.optim_state_dtype == 'bfloat16' else 'fp32'} (shard)":
            (4 if cfg.optim_state_dtype == "bfloat16" else 8) * N / ws,
        "bf16 params gathered (2 blocks + root)": 2 * (2 * block + root),
        "fp32 grads of a block before reduce-scatter": 4 * block,
        "activations": tokens * (m.n_layer * per_layer + logits),
        "activations, full checkpointing": tokens * (m.n_layer * 2 * m.d_model + per_layer + logits),
    }


def dry_run(cfg, mcfg):
    if mcfg.vocab_size == 0:  # the toy: vocabulary of the tokenizer it would train
        mcfg.vocab_size = padded_vocab(cfg.tokenizer_vocab + len(data.SPECIAL_TOKENS))
    with torch.device("meta"):
        model = GPT(mcfg)
    N, gib = model.num_params(), 2 ** 30
    gb, gpus = global_batch(cfg, cfg.world_size), f"{cfg.world_size} GPU" + "s" * (cfg.world_size > 1)
    print(f"model       {mcfg.n_layer} layers, d_model {mcfg.d_model}, {mcfg.n_head} heads x {mcfg.head_dim} "
          f"({mcfg.n_kv_head} kv), SwiGLU {mcfg.ffn_hidden}, vocab {mcfg.vocab_size}, {mcfg.norm}")
    print(f"parameters  {N:,} ({N / 1e9:.2f}B); non-embedding {model.num_params(True):,} "
          f"({model.num_params(True) / 1e9:.2f}B)")
    print(f"flops/token {model.estimate_flops(cfg.seq_len):.3e} training (6N + causal attention at seq_len {cfg.seq_len})")
    per_step = cfg.batch_size * cfg.world_size
    if gb % per_step:
        print(f"batch       global_batch_size {gb} is not a multiple of batch_size x world_size = {per_step}: "
              "train.py will refuse this")
    else:
        print(f"batch       {gb} x {cfg.seq_len} = {gb * cfg.seq_len:,} tokens/step: {gpus} "
              f"x micro-batch {cfg.batch_size} x {gb // per_step} accumulation steps")
    plan = memory_plan(model, cfg)
    print(f"memory/GPU  FSDP2 over {gpus} (estimate):")
    for k, v in plan.items():
        print(f"  {k:42s} {v / gib:9.2f} GiB")
    states = sum(v for k, v in plan.items() if not k.startswith("activations"))
    print(f"  {'total without / with activation checkpointing':42s} {(states + plan['activations']) / gib:9.2f} / "
          f"{(states + plan['activations, full checkpointing']) / gib:.2f} GiB")


# -----------------------------------------------------------------------------
# training

def train(cfg, mcfg):
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rank, world_size, device, mesh = setup_distributed(cfg)
    try:
        return run(cfg, mcfg, rank, world_size, device, mesh)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(cfg, mcfg, rank, world_size, device, mesh):
    bf16 = cfg.dtype == "bfloat16" or cfg.dtype == "auto" and device.type == "cuda"
    # one process: bf16 autocast; FSDP2: its mixed-precision policy casts the parameters instead
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 and mesh is None else nullcontext()
    say = print if rank == 0 else lambda *a, **k: None
    for key, value, other in (("attn_impl", mcfg.attn_impl, "sdpa"), ("optimizer", cfg.optimizer, "adamw_torch")):
        if "triton" in value and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError(f"{key}={value!r} runs on CUDA, not {device}: use {key}='auto' or {other!r}, or set "
                              "TRITON_INTERPRET=1 to run the kernels in Triton's (slow) interpreter")
    triton_adamw = cfg.optimizer == "adamw_triton" or cfg.optimizer == "auto" and device.type == "cuda" and HAVE_TRITON
    if cfg.optim_state_dtype == "bfloat16" and not triton_adamw:
        raise ConfigError("optim_state_dtype='bfloat16' needs optimizer='adamw_triton'")

    if rank == 0:
        manifest = prepare_data(cfg)
    barrier()  # rank 0 prepares the data once; the others read it
    if rank != 0:
        manifest = data.load_manifest(cfg.data_dir, verify=False)
    enc = data.tokenizer_of(cfg.data_dir, manifest)
    if mcfg.vocab_size == 0:
        mcfg.vocab_size = padded_vocab(enc.n_vocab)
    if mcfg.vocab_size < enc.n_vocab:
        raise ConfigError(f"vocab_size={mcfg.vocab_size} is smaller than the tokenizer's {enc.n_vocab} tokens")
    if cfg.seq_len > mcfg.max_seq_len:
        raise ConfigError(f"seq_len={cfg.seq_len} is longer than max_seq_len={mcfg.max_seq_len}")
    gb = global_batch(cfg, world_size)
    if gb % (cfg.batch_size * world_size):
        raise ConfigError(f"global_batch_size={gb} is not a multiple of batch_size={cfg.batch_size} "
                          f"x {world_size} ranks")
    accum = gb // (cfg.batch_size * world_size)
    batches = data.Batches(cfg.data_dir, cfg.seq_len, gb, cfg.seed, verify=False,  # verified above
                           mixture=cfg.mixture, fim_rate=cfg.fim_rate, fim_spm_rate=cfg.fim_spm_rate,
                           fim_sources=cfg.fim_sources)
    if cfg.mixture:
        say("epochs per source over the run: " + ", ".join(f"{k} {v:.2f}" for k, v in batches.epochs(cfg.max_steps).items()))
    val = data.val_sequences(cfg.data_dir, manifest, cfg.seq_len, cfg.eval_seqs)
    eot = manifest["eot"] if cfg.doc_mask else None

    model = build_model(mcfg, device, cfg.seed, cfg, mesh, bf16)
    groups = model.param_groups(cfg.weight_decay, cfg.weight_decay_all)
    if triton_adamw:
        from kernels.adamw import AdamW
        optimizer = AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                          state_dtype=getattr(torch, cfg.optim_state_dtype))
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)

    if rank == 0:
        os.makedirs(cfg.out_dir, exist_ok=True)
    barrier()
    newest = find_checkpoint(cfg.out_dir)
    ckpt = newest if cfg.resume == "auto" else cfg.resume or None
    if cfg.resume == "" and newest:
        raise ConfigError(f"{cfg.out_dir} already holds checkpoints: pass --resume=auto to continue that run, "
                          "or choose another out_dir")
    start = 0
    if ckpt:
        meta = read_checkpoint_meta(ckpt)
        if meta["manifest_sha256"] != manifest["sha256"]:
            raise data.DataError(f"{cfg.data_dir}/manifest.json has sha256 {manifest['sha256']}, but {ckpt} was "
                                 f"trained on data whose manifest has sha256 {meta['manifest_sha256']}")
        diff = {k: (v, getattr(mcfg, k)) for k, v in meta["config"]["model"].items()
                if getattr(mcfg, k) != v and k not in ("attn_impl", "loss_chunk")}  # how it runs may change, not the model
        if diff:
            raise ConfigError(f"{ckpt} holds a different model: " + ", ".join(f"{k}={a!r} there, {b!r} here" for k, (a, b) in diff.items()))
        if meta["data_position"]["global_batch"] != gb:
            raise ConfigError(f"{ckpt} was trained with a global batch of {meta['data_position']['global_batch']} "
                              f"sequences, this run has {gb}: set --global_batch_size={meta['data_position']['global_batch']}")
        start = load_checkpoint(ckpt, model, optimizer, rank)["step"]
        say(f"resuming from {ckpt} at step {start} (saved by {meta['world_size']} ranks, now {world_size})")
    if cfg.init_from and not ckpt:  # full weights into this (possibly sharded) model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        weights = torch.load(cfg.init_from, map_location="cpu", weights_only=True)
        weights = weights.get("model", weights)
        try:
            set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
        except (RuntimeError, KeyError, ValueError) as e:  # another shape: say which, in one line
            raise ConfigError(f"--init_from={cfg.init_from} does not fit this model config: {' '.join(str(e).split())[:300]}")
        say(f"initialised from {cfg.init_from}")
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if rank == 0:
        kept = [l for l in open(metrics_path)] if os.path.exists(metrics_path) and start else []
        with open(metrics_path, "w") as f:  # forget what ran after the checkpoint we resume from
            f.writelines(l for l in kept if json.loads(l)["step"] <= start)
    metrics = open(metrics_path, "a") if rank == 0 else open(os.devnull, "w")
    pending = [] if cfg.async_ckpt else None

    def log(**row):
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()

    def checkpoint(step):
        meta = dict(step=step, config=dict(train=asdict(cfg), model=asdict(mcfg)), git=git_revision(),
                    data_dir=cfg.data_dir, manifest_sha256=manifest["sha256"], world_size=world_size,
                    data_position=dict(step=step, global_batch=gb, samples=step * gb, tokens=step * gb * cfg.seq_len,
                                       epoch=step * gb / batches.n),
                    time=time.strftime("%Y-%m-%d %H:%M:%S"), torch=torch.__version__)
        finish_pending(pending or [])  # the previous background save completes first
        return save_checkpoint(cfg.out_dir, step, model, optimizer, meta, cfg.keep_last, cfg.keep_every, rank, pending)

    run_model = model  # compiled per block in build_model
    flops_per_token, peak = model.estimate_flops(cfg.seq_len), peak_flops(device)
    tokens_per_step = gb * cfg.seq_len
    say(f"{model.num_params():,} parameters | {tokens_per_step:,} tokens/step ({gb} x {cfg.seq_len}, "
        f"{accum} micro-batches of {cfg.batch_size} x {world_size} rank{'s' * (world_size > 1)}) | "
        f"{batches.n:,} samples/epoch | {device}{', FSDP2 ' + cfg.fsdp if mesh else ''}, "
        f"{'bf16' if bf16 else 'fp32'}")
    write = tqdm.write if rank == 0 else lambda *a, **k: None

    def run_eval(step):
        losses = evaluate(run_model, val, cfg.batch_size, device, autocast, eot)
        write(f"step {step:6d} | val " + " | ".join(f"{k} {v:.4f}" for k, v in losses.items()))
        log(step=step, val=losses)

    if start == 0:
        run_eval(0)
    t_start = time.time()
    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, desc="train", dynamic_ncols=True,
               mininterval=1.0, disable=None if rank == 0 else True)
    stop, bad = [], 0

    def on_signal(sig, frame):  # Ctrl-C or a scheduler's SIGTERM: finish the step and save; a second one aborts
        if stop:
            raise KeyboardInterrupt
        stop.append(sig)
        write(f"{signal.Signals(sig).name}: stopping after this step to save a checkpoint (again to abort)")

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for step in bar:
            t0 = time.time()
            lr = lr_at(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_mult"]
            x = batches.batch(step, rank, world_size).to(device)  # this rank's part of the global batch
            loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per micro-batch
            for i, micro in enumerate(x.split(cfg.batch_size)):
                if mesh is not None:  # FSDP2 reduces the gradients once, after the last micro-batch
                    model.set_requires_gradient_sync(i == accum - 1)
                with autocast:
                    docs = data.doc_ids(micro[:, :-1], eot) if eot is not None else None
                    loss = run_model(micro[:, :-1], micro[:, 1:], doc_ids=docs) / accum
                loss.backward()
                loss_sum += loss.detach()
            # one reduction for the mean loss over ranks and for a stop requested on any rank
            flags = torch.stack([loss_sum.float(), torch.tensor(float(bool(stop)), device=device)])
            if dist.is_initialized():
                dist.all_reduce(flags)
            loss_sum, stop_any = flags[0].item() / world_size, flags[1].item() > 0
            if stop_any and not stop:
                stop.append(signal.SIGTERM)
            if not math.isfinite(loss_sum):  # skip the update, keep the weights; too many in a row stop the run
                bad += 1
                optimizer.zero_grad(set_to_none=True)
                write(f"step {step + 1}: loss is {loss_sum}, update skipped ({bad} in a row)")
                log(step=step + 1, skipped=True, loss=str(loss_sum))
                if bad >= cfg.max_bad_steps:
                    raise TrainingError(f"step {step + 1}: {bad} steps in a row with a NaN or inf loss; stopping. "
                                        f"The last checkpoint is {find_checkpoint(cfg.out_dir)}")
                continue
            bad = 0
            if triton_adamw:  # one reduction; the clipping itself happens inside the fused step
                gnorm = optimizer.clip_grad_norm_(cfg.grad_clip or float("inf")).item()
            else:
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
                gnorm = (gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            dt = time.time() - t0
            if done % cfg.log_interval == 0 or done == cfg.max_steps or done == start + 1:
                tok_s = tokens_per_step / dt
                eta = (time.time() - t_start) / (done - start) * (cfg.max_steps - done)
                mfu_now = flops_per_token * tok_s / (peak * world_size) if peak else None  # per GPU
                mfu = f" | mfu {100 * mfu_now:.1f}%" if peak else ""
                write(f"step {done:6d}/{cfg.max_steps} | loss {loss_sum:.4f} | lr {lr:.2e} | gnorm {gnorm:.3f} | "
                           f"{dt * 1000:.0f} ms | {tok_s:,.0f} tok/s{mfu} | eta {fmt_time(eta)}")
                log(step=done, loss=loss_sum, lr=lr, grad_norm=gnorm, dt=dt, tok_per_s=tok_s,
                    mfu=mfu_now,
                    mem=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None)
            if done % cfg.eval_interval == 0 or done == cfg.max_steps:
                run_eval(done)
            if done % cfg.ckpt_interval == 0 or done == cfg.max_steps or stop:
                checkpoint(done)
            if stop:
                finish_pending(pending or [])
                write(f"saved step {done} to {cfg.out_dir}; --resume=auto continues from it")
                raise KeyboardInterrupt
        finish_pending(pending or [])
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        bar.close()
        metrics.close()
    if cfg.sample_tokens:
        sample(model, enc, cfg, device, autocast, say)
    return model


def sample(model, enc, cfg, device, autocast, say=print):
    model.eval()
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    for prompt in ("Alice was beginning to", "子曰：", "def "):
        idx = torch.tensor([enc.encode_ordinary(prompt)], device=device)
        with autocast:
            out = model.generate(idx, min(cfg.sample_tokens, model.cfg.max_seq_len - idx.size(1)),
                                 temperature=0.8, top_k=50, generator=gen)
        say(f"--- {prompt!r} ---\n{enc.decode(out[0].tolist())}")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ckpt = data.pop_flag(argv, "--consolidate")
    if ckpt:  # python train.py --consolidate CKPT [OUT.pt]
        return consolidate(ckpt, argv[0] if argv else None)
    cfg, mcfg = load_config(argv)
    return dry_run(cfg, mcfg) if cfg.dry_run else train(cfg, mcfg)


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, data.DataError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `python train.py ... --dry_run | head`
        sys.exit(0)
