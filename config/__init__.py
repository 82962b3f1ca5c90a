"""
The config system: TrainConfig (how a run trains) beside ModelConfig (what it trains; model.py
builds it),
read from a file of plain Python assignments and --key=value overrides.

    cfg, mcfg = load_config(["config/neo7b.py", "--lr=1e-4"])   # no file: config/toy.py

Every field of TrainConfig and of ModelConfig below is a key. A mistake is a ConfigError
of one line naming the file and line (or the flag), the key and what was expected.
"""
import ast, difflib, importlib.util, json, math, os, re, subprocess, sys, time, typing
from dataclasses import MISSING, dataclass, field, fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project
DEFAULT_CONFIG = os.path.join(ROOT, "config", "toy.py")


class ConfigError(Exception):
    """A bad config: the message names the file and line (or the flag),
    the key and what was expected."""


# not on macOS or Windows: attn_impl="auto" uses SDPA
HAVE_TRITON = importlib.util.find_spec("triton") is not None


@dataclass
class ModelConfig:
    # what a model is; model.py builds it. A plain dataclass here, so that reading a config
    # (curate.py, data.py) needs no torch
    vocab_size: int = 0          # 0: taken from the tokenizer, padded to a multiple of 64
    n_layer: int = 4             # transformer blocks
    d_model: int = 128           # the width of the residual stream
    n_head: int = 4              # attention heads (query heads under GQA)
    n_kv_head: int = 0           # 0: n_head (MHA); fewer for GQA, 1 for MQA
    head_dim: int = 0            # 0: d_model // n_head (MAP-Neo uses 192 with d_model 3072)
    ffn_hidden: int = 384        # SwiGLU hidden size, explicit (11008, 10922, 24576)
    max_seq_len: int = 256       # longest context: sizes the rotary tables
    norm: str = "rmsnorm"        # "rmsnorm" or "layernorm" (LayerNorm has a bias)
    norm_eps: float = 1e-5       # added to the variance in RMSNorm / LayerNorm
    qkv_bias: bool = False       # biases on the q, k, v projections (CrystalCoder)
    attn_out_bias: bool = False  # a bias on the attention output projection
    ffn_bias: bool = False       # biases in the SwiGLU MLP
    rope_theta: float = 10000.0  # rotary base (MAP-Neo 10000, longer contexts use more)
    rotary_dim: int = 0          # 0: the whole head; CrystalCoder rotates 32 of 128 dims
    tie_embeddings: bool = False  # the output layer shares the token embedding's weights
    # initialisation: normal(0, std), truncated at +-init_truncate std when > 0
    init_std: float = 0.02       # hidden matrices (and an untied lm_head)
    init_std_embed: float = 0.0  # 0: init_std
    init_std_out: float = 0.0    # attention and MLP output projections;
                                 # 0: init_std / sqrt(2 n_layer)
    init_truncate: float = 0.0   # 0: not truncated
    # muP (CrystalCoder); the defaults are the standard parametrisation
    embed_mult: float = 1.0      # token embeddings are multiplied by this (14.6)
    logit_mult: float = 1.0      # logits are multiplied by this (2.22 * 0.0625)
    qk_scale_by_d: bool = False  # attention scores scaled by 1/head_dim instead of 1/sqrt(head_dim)
    hidden_lr_mult: float = 1.0  # lr multiplier of the matrices inside blocks (0.0625)

    def __post_init__(self):
        if (min(self.n_layer, self.d_model, self.n_head, self.ffn_hidden, self.max_seq_len) <= 0
                or self.vocab_size < 0):
            raise ValueError("n_layer, d_model, n_head, ffn_hidden and max_seq_len "
                             "must be positive")
        self.n_kv_head = self.n_kv_head or self.n_head
        self.head_dim = self.head_dim or self.d_model // self.n_head
        self.rotary_dim = self.rotary_dim or self.head_dim
        self.init_std_embed = self.init_std_embed or self.init_std
        self.init_std_out = self.init_std_out or self.init_std / math.sqrt(2 * self.n_layer)
        checks = [
            (self.n_head % self.n_kv_head == 0,
             f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}"),
            (self.rotary_dim % 2 == 0 and self.rotary_dim <= self.head_dim,
             f"rotary_dim={self.rotary_dim} must be even and at most head_dim={self.head_dim}"),
            (self.norm in ("rmsnorm", "layernorm"),
             f"norm={self.norm!r} must be 'rmsnorm' or 'layernorm'"),
            *[(v > 0, f"{k}={v} must be positive")
              for k, v in (("norm_eps", self.norm_eps), ("rope_theta", self.rope_theta),
                           ("init_std", self.init_std), ("embed_mult", self.embed_mult),
                           ("logit_mult", self.logit_mult),
                           ("hidden_lr_mult", self.hidden_lr_mult))],
            (self.init_truncate >= 0, f"init_truncate={self.init_truncate} must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@dataclass
class TrainConfig:
    # run
    out_dir: str = "out/toy"     # checkpoints, metrics.jsonl, evals: the run's folder
    seed: int = 1337             # weights, data order and sampling all follow from it
    device: str = "auto"         # auto (cuda when there is one), cpu, cuda, cuda:N
    dtype: str = "auto"          # auto (bfloat16 autocast on cuda, float32 on cpu), float32,
                                 # bfloat16
    compile: bool = False        # torch.compile each block (GPU; minutes to compile at start)
    attn_impl: str = "auto"      # triton (nanokernels/flash_attention.py, CUDA), sdpa (torch),
                                 # auto: triton on CUDA
    loss_chunk: int = 0          # > 0: the training loss over this many tokens at a time,
                                 # never all logits at once
    dry_run: bool = False        # print parameters, FLOPs and memory per GPU, then exit;
                                 # needs no GPU
    world_size: int = 1          # the number of GPUs dry_run plans for (a run takes torchrun's)
    # many GPUs: torchrun starts one process per GPU; FSDP2 shards parameters, gradients and
    # AdamW state
    fsdp: str = "full"           # full: shard over all ranks; hsdp: shard within a node,
                                 # replicate across nodes
    ac: str = "none"             # activation checkpointing: none, full,
                                 # selective (keep matmul outputs), every:N
    dist_timeout: int = 600      # seconds a collective waits for a dead or stuck rank
                                 # before the job fails
    async_ckpt: bool = False     # write checkpoints in the background while training goes on
    max_bad_steps: int = 5       # steps in a row with a NaN/inf loss (each skipped)
                                 # before the run stops
    # corpus curation (python curate.py clean | dedup | train-tokenizer | pipeline):
    # source_dir -> clean -> clean_dir -> dedup -> docs_dir -> tokenize -> tokens_dir
    # (with tasks_dir: ... dedup -> dedup_dir -> decontaminate -> docs_dir ...)
    source_dir: str = ""         # documents as fetched
    clean_dir: str = ""          # documents that passed the cleaning rules
    tasks_dir: str = ""          # task files (.jsonl, an item a line) whose items no training
                                 # document may hold: decontaminate runs when it is set
    dedup_dir: str = ""          # dedup's output when decontaminate follows it
    clean_rules: dict = field(default_factory=dict)  # {lang: {rule: threshold}}
                                                     # over curate.CLEAN_RULES
    tokenizer_sample: int = 50_000_000  # characters a BPE learns from, drawn across sources
    workers: int = 0             # curation and tokenize: local processes; 0: every core
                                 # (torchrun: one per rank)
    shard_mb: float = 16         # curation and tokenize: input MB per task and per output shard
                                 # (terabytes: ~256)
    # data: the documents in docs_dir are tokenized into tokens_dir on first use
    docs_dir: str = "data/tiny"  # the documents a run trains on (curation's output, or your own)
    tokens_dir: str = "data/tiny/tokens"  # their token shards, manifest.json and tokenizer
    tokenizer: str = "bpe"       # "bpe" (trained on docs_dir), a .tiktoken path, a tiktoken name,
                                 # or a released model's tokenizer.json (or its folder)
    tokenizer_vocab: int = 4096  # BPE vocabulary when tokenizer="bpe" (special tokens come on top)
    val_frac: float = 0.05       # the last val_frac of each source's tokens is held out
    hash_shards: bool = True     # sha256 every shard at start (turn off for terabytes)
    # batch
    seq_len: int = 256           # tokens per training sequence (at most max_seq_len)
    batch_size: int = 16         # sequences per micro-batch per rank
    global_batch_size: int = 0   # sequences per optimizer step over all ranks;
                                 # 0: batch_size x ranks
    doc_mask: bool = False       # packed documents do not attend to each other
                                 # (split at end-of-text)
    mixture: list = field(default_factory=list)  # [(start_step, {source: weight}), ...] phases;
                                                 # []: all data alike
    fim_rate: float = 0.0        # fill-in-the-middle: the share of documents of fim_sources
                                 # rearranged (CrystalCoder 0.9)
    fim_spm_rate: float = 0.5    # of those, the share in suffix-prefix-middle order
    fim_sources: list = field(default_factory=lambda: ["code"])  # the sources FIM rearranges
    # optimizer
    optimizer: str = "auto"      # adamw_triton (nanokernels/adamw.py, CUDA), adamw_torch,
                                 # auto: triton on CUDA
    optim_state_dtype: str = "float32"  # AdamW moments; bfloat16 (adamw_triton only)
                                        # saves 4 bytes per parameter
    lr: float = 3e-3             # peak learning rate, reached after warmup_steps
    min_lr: float = 3e-4         # the rate at the end of the decay
    beta1: float = 0.9           # AdamW: the decay of the running mean of gradients
    beta2: float = 0.95          # AdamW: the decay of the running mean of squared gradients
    eps: float = 1e-8            # AdamW's epsilon
    weight_decay: float = 0.1    # AdamW's decoupled decay (matrices only; all: weight_decay_all)
    weight_decay_all: bool = False  # decay every parameter (Amber), not only the matrices
    grad_clip: float = 1.0          # 0: no clipping
    # schedule: linear warmup, then cosine | linear | wsd | cosine_exp
    # (MAP-Neo: cosine, then exponential decay)
    schedule: str = "cosine"     # after warmup: cosine, linear, wsd or cosine_exp
    max_steps: int = 1000        # optimizer steps of the run (a resume trains up to it)
    warmup_steps: int = 50       # linear warmup from lr / warmup_steps to lr
    schedule_steps: int = 0      # the step at which cosine / linear reach min_lr; 0: max_steps
    decay_steps: int = 0         # wsd, cosine_exp: the last decay_steps steps are the decay phase
    # evaluation, logging, checkpoints
    eval_interval: int = 100     # validation loss per source every eval_interval steps
                                 # (and first and last)
    eval_seqs: int = 0           # validation sequences per source; 0: all
    log_interval: int = 10       # a log line (and a metrics.jsonl row) every log_interval steps
    ckpt_interval: int = 500     # a checkpoint every ckpt_interval steps (and at the last)
    keep_last: int = 2           # complete checkpoints kept, besides every keep_every-th
    keep_every: int = 0          # > 0: every keep_every-th step's checkpoint is kept for good
    resume: str = "auto"         # auto: newest complete checkpoint in out_dir; "": fresh;
                                 # or a checkpoint dir
    init_from: str = ""          # a fresh run starts from these weights
                                 # (eval.py import of a Llama, or --consolidate)
    sample_tokens: int = 64      # tokens sampled per prompt at the end; 0: no samples
    wandb_project: str = ""      # W&B project that also gets metrics.jsonl's rows (rank 0);
                                 # "": off. Needs `pip install wandb`; WANDB_MODE=offline: local
    wandb_name: str = ""         # the run's name in W&B; "": out_dir's folder name

    def __post_init__(self):
        checks = [
            (self.schedule in ("cosine", "linear", "wsd", "cosine_exp"),
             f"schedule={self.schedule!r} must be cosine, linear, wsd or cosine_exp"),
            (self.schedule not in ("wsd", "cosine_exp") or 0 < self.decay_steps <= self.max_steps,
             f"schedule={self.schedule!r} needs 0 < decay_steps <= max_steps, "
             f"got decay_steps={self.decay_steps}"),
            (self.optimizer in ("auto", "adamw_triton", "adamw_torch"),
             f"optimizer={self.optimizer!r} must be auto, adamw_triton or adamw_torch"),
            (self.optim_state_dtype in ("float32", "bfloat16"),
             f"optim_state_dtype={self.optim_state_dtype!r} must be float32 or bfloat16"),
            (self.attn_impl in ("auto", "sdpa", "triton"),
             f"attn_impl={self.attn_impl!r} must be 'auto', 'sdpa' or 'triton'"),
            (self.attn_impl != "triton" or HAVE_TRITON,
             "attn_impl='triton' needs triton installed"),
            (self.loss_chunk >= 0, f"loss_chunk={self.loss_chunk} must be >= 0"),
            (self.fsdp in ("full", "hsdp"), f"fsdp={self.fsdp!r} must be full or hsdp"),
            (self.ac in ("none", "full", "selective")
             or self.ac.startswith("every:") and self.ac[6:].isdigit() and int(self.ac[6:]) > 0,
             f"ac={self.ac!r} must be none, full, selective or every:N (N >= 1)"),
            (self.dtype in ("auto", "float32", "bfloat16"),
             f"dtype={self.dtype!r} must be auto, float32 or bfloat16"),
            (self.workers >= 0 and self.shard_mb > 0,
             f"workers={self.workers} must be >= 0 and shard_mb={self.shard_mb} positive"),
            (min(self.seq_len, self.batch_size, self.max_steps, self.world_size) > 0,
             "seq_len, batch_size, max_steps and world_size must be positive"),
            (self.global_batch_size >= 0
             and min(self.eval_interval, self.log_interval, self.ckpt_interval, self.keep_last) > 0,
             "global_batch_size must be >= 0 and "
             "eval_interval, log_interval, ckpt_interval, keep_last positive"),
            (re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None,
             f"device={self.device!r} must be auto, cpu, cuda, cuda:N or mps"),
            (self.lr > 0, f"lr={self.lr} must be positive"),
            (0 <= self.min_lr <= self.lr,
             f"min_lr={self.min_lr} must be between 0 and lr={self.lr}"),
            *[(v >= 0, f"{k}={v} must be >= 0")
              for k, v in (("warmup_steps", self.warmup_steps),
                           ("schedule_steps", self.schedule_steps),
                           ("decay_steps", self.decay_steps), ("grad_clip", self.grad_clip),
                           ("weight_decay", self.weight_decay),
                           ("eval_seqs", self.eval_seqs), ("keep_every", self.keep_every),
                           ("sample_tokens", self.sample_tokens))],
            (self.eps > 0, f"eps={self.eps} must be positive (AdamW divides by sqrt(v) + eps)"),
            *[(0 <= v < 1, f"{k}={v} must be in [0, 1)")
              for k, v in (("beta1", self.beta1), ("beta2", self.beta2))],
            (0 < self.val_frac < 1,
             f"val_frac={self.val_frac} must be between 0 and 1 "
             "(the held-out share of each source)"),
            *[(0 <= v <= 1, f"{k}={v} must be in [0, 1]")
              for k, v in (("fim_rate", self.fim_rate), ("fim_spm_rate", self.fim_spm_rate))],
            (self.max_bad_steps > 0 and self.dist_timeout > 0,
             f"max_bad_steps={self.max_bad_steps} and "
             f"dist_timeout={self.dist_timeout} must be positive"),
            (self.tokenizer_vocab >= 256 and self.tokenizer_sample > 0,
             f"tokenizer_vocab={self.tokenizer_vocab} must be "
             f">= 256 (the bytes) and tokenizer_sample={self.tokenizer_sample} positive"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


def global_batch(cfg, world_size):
    """Sequences per optimizer step over all ranks."""
    return cfg.global_batch_size or cfg.batch_size * world_size


def uses_bf16(cfg, device_type):
    """Whether a run of cfg computes in bf16 on a device of this type ("cuda", "cpu", ...)."""
    return cfg.dtype == "bfloat16" or cfg.dtype == "auto" and device_type == "cuda"


def resolve_vocab(mcfg, n_tokens):
    """Set mcfg.vocab_size from a tokenizer of n_tokens when it is 0 (padded to a multiple of 64,
    which matmuls like), and refuse a vocabulary too small for the tokenizer."""
    if mcfg.vocab_size == 0:
        mcfg.vocab_size = (n_tokens + 63) // 64 * 64
    if mcfg.vocab_size < n_tokens:
        raise ConfigError(f"vocab_size={mcfg.vocab_size} is smaller than "
                          f"the tokenizer's {n_tokens} tokens")
    return mcfg


# -----------------------------------------------------------------------------
# files of plain assignments, then --key=value overrides

# keys that were renamed: an old config, flag or checkpoint still reads, with a one-line note
RENAMED = {"raw_data": "docs_dir", "data_dir": "tokens_dir", "verify_data": "hash_shards"}
_noted = set()


def renamed(key, where):
    """The current name of key (a note on stderr, once per key, when it is an old one)."""
    new = RENAMED.get(key)
    if new is None:
        return key
    if key not in _noted:
        _noted.add(key)
        print(f"note: {where}: {key} is now called {new}; read as {new}", file=sys.stderr)
    return new


def key_types():
    types = {}
    for cls in (ModelConfig, TrainConfig):
        hints = typing.get_type_hints(cls)
        types.update({f.name: (cls, hints[f.name]) for f in fields(cls)})
    return types


def check_key(key, where, types):
    if key not in types:
        near = difflib.get_close_matches(key, types, n=1, cutoff=0.0)
        raise ConfigError(f"{where}: unknown key '{key}' (did you mean '{near[0]}'? "
                          "`python train.py --help` lists every key)")


def shown(path):
    """path as a message shows it: relative to the working folder when under it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def help_text(values):
    """Every key with its value (from values, {key: value} of a file and flags, else the
    default) and its comment, in the groups of the two dataclasses above: their source is the
    one description of the keys."""
    src = open(__file__, encoding="utf-8").read().splitlines()
    out = []
    for cls in (ModelConfig, TrainConfig):
        defaults = {f.name: f.default if f.default_factory is MISSING else f.default_factory()
                    for f in fields(cls)}
        start = src.index(f"class {cls.__name__}:")
        out.append(f"\n{cls.__name__}")
        for line in src[start + 1:]:
            if not line.startswith("    ") or line.strip().startswith("def "):
                break
            key = re.match(r"    (\w+):", line)
            comment = line.split("#", 1)[1].strip() if "#" in line else ""
            if key:  # a key: its value, then what it does
                value = values.get(key[1], defaults[key[1]])
                shown_value = value if isinstance(value, str) else repr(value)
                out.append((f"  --{key[1]}={shown_value}".ljust(32) + " " + comment).rstrip())
            elif line.startswith("    #"):  # a group's heading
                out.append(f" # {comment}")
            elif comment:  # the comment of the line above goes on
                out[-1] += " " + comment
    return "\n".join(out).lstrip("\n")


def check_value(key, value, typ, where):
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where}: {key} = {value!r} is {type(value).__name__}, "
                      f"expected {typ.__name__}")


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
    src, name = open(path, encoding="utf-8").read(), shown(path)
    try:
        tree = ast.parse(src, path)
    except SyntaxError as e:
        raise ConfigError(f"{name}:{e.lineno}: syntax error: {e.msg}") from None
    lines = {t.id: node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name)}
    namespace = {}
    try:
        exec(compile(tree, path, "exec"), namespace)
    except Exception as e:
        tb = e.__traceback__
        while tb.tb_next:
            tb = tb.tb_next
        raise ConfigError(f"{name}:{tb.tb_lineno}: {type(e).__name__}: {e}") from None
    values = {}
    for key, value in namespace.items():
        if key.startswith("_") or callable(value) or type(value).__name__ == "module":
            continue
        where = f"{name}:{lines.get(key, '?')}"
        key = renamed(key, where)
        check_key(key, where, types)
        values[key] = (value, where)
    return values


def read_values(argv):
    """[config.py] [--key=value ...] -> (the file, {key: (value, where it was set)})."""
    types = key_types()
    argv = list(argv)
    path = argv.pop(0) if argv and not argv[0].startswith("-") else DEFAULT_CONFIG
    values = read_config_file(path, types)
    for arg in argv:
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: give one config file first, "
                              "then --key=value overrides (`python train.py --help`)")
        key, eq, raw = arg[2:].partition("=")
        key = renamed(key, arg)
        check_key(key, arg, types)
        if not eq and types[key][1] is not bool:
            raise ConfigError(f"{arg}: needs a value, as in --{key}=VALUE")
        values[key] = (parse_flag(raw, types[key][1]) if eq else True, arg)
    return path, values


def load_config(argv):
    """[config.py] [--key=value ...] -> (TrainConfig, ModelConfig);
    config/toy.py when no file is given."""
    types = key_types()
    path, values = read_values(argv)
    argv = argv[1:] if argv and not argv[0].startswith("-") else argv
    parts = {ModelConfig: {}, TrainConfig: {}}
    for key, (value, where) in values.items():
        cls, typ = types[key]
        parts[cls][key] = check_value(key, value, typ, where)
    try:
        cfg, mcfg = TrainConfig(**parts[TrainConfig]), ModelConfig(**parts[ModelConfig])
    except ValueError as e:
        raise ConfigError(f"{shown(path)} with {' '.join(argv) or 'no overrides'}: {e}") from None
    if cfg.warmup_steps > cfg.max_steps and place()[0] == 0:  # a quick try: allowed, said
        print(f"warning: warmup_steps={cfg.warmup_steps} is longer than the run "
              f"(max_steps={cfg.max_steps}): "
              f"the learning rate stops short of lr={cfg.lr:g}", file=sys.stderr)
    return cfg, mcfg


def config_from_dict(d, where="a checkpoint's meta.json"):
    """(TrainConfig, ModelConfig) from a checkpoint's meta.json "config"; a key this code does
    not know (a newer nano360 wrote it) is a one-line error naming where."""
    train, model = dict(d["train"]), dict(d["model"])
    # run settings that older checkpoints kept with the model
    for key in ("attn_impl", "loss_chunk"):
        if key in model:
            train.setdefault(key, model.pop(key))
    train = {renamed(k, where): v for k, v in train.items()}
    unknown = sorted((set(train) - set(key_types())) | (set(model) - set(key_types())))
    if unknown:
        raise ConfigError(f"{where}: keys this nano360 ({git_revision()[:12]}) does not know: "
                          f"{', '.join(unknown)}; a newer nano360 wrote it: update the code "
                          "(git pull) to read it")
    return TrainConfig(**train), ModelConfig(**model)


# -----------------------------------------------------------------------------
# the command line and the process a command runs in

def place(array=False):
    """(rank, world size, local rank) of this process among the processes of one job: the
    RANK, WORLD_SIZE and LOCAL_RANK torchrun sets (any launcher may set them); with array (a
    curation stage), else a Slurm array task's id and count; else (0, 1, 0)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if array and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]), 0
    return 0, 1, 0


def git_revision():
    """The code's git commit, with -dirty when tracked files changed; "unknown" outside git."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        rev = git("rev-parse", "HEAD")
        dirty = "-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
        return rev + dirty if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pop_flag(args, flag):
    """Remove `flag=V` or `flag V` from args and return V (None when absent)."""
    for k, a in enumerate(args):
        if a.startswith(flag + "="):
            return args.pop(k).split("=", 1)[1]
        if a == flag:
            if k + 1 == len(args):
                raise ConfigError(f"{flag} needs a value")
            args.pop(k)
            return args.pop(k)
    return None


def report(msg):
    """The one line of a failed command: on stderr, and in torchrun's error file, whose line
    its summary shows as the root cause. Under torchrun the other ranks give rank 0 a moment
    first (torchrun stops every rank when one exits), so an error every rank meets is said
    once, and one that only a later rank meets is still said."""
    rank = place()[0]
    if rank:
        time.sleep(5)
        msg = f"rank {rank}: {msg}"
    print(msg, file=sys.stderr, flush=True)
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        info = {"py_callstack": msg, "timestamp": str(int(time.time()))}
        with open(os.environ["TORCHELASTIC_ERROR_FILE"], "w") as f:
            json.dump({"message": {"message": msg, "extraInfo": info}}, f)


def run_command(main, *errors, done=True):
    """`python X.py ...`: main(argv); a ConfigError or one of errors ends it in one line on stderr
    (from rank 0 alone under torchrun) with status 2, Ctrl-C with 130, a closed pipe
    (`... | head`) quietly. done=False: main's result comes back instead of the exit."""
    sys.stdout.reconfigure(line_buffering=True)  # a log file gets each line as it is said
    try:
        status = main(sys.argv[1:])
    except (ConfigError, *errors) as e:
        report(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    if not done:
        return status
    sys.exit(status if isinstance(status, int) else 0)
