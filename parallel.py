"""
Where a run computes: the device and the process group (torchrun), the model built on the meta
device and spread over the ranks with FSDP2 (activation checkpointing, compile per block,
fully_shard per block then the root, then init_weights), the optimizer, and the peak FLOPs that
MFU divides by. train.py calls these in its setup; the benchmarks and tests call them alone.
"""
import datetime, functools, os

import torch
import torch.distributed as dist

from config import ConfigError, HAVE_TRITON, TrainConfig, place
from model import GPT


def check_device(name, local=0):
    """A one-line error for a device this machine does not have
    (the format is checked with the config)."""
    if name.startswith("cuda"):
        n = int(name[5:]) if ":" in name else local
        if not torch.cuda.is_available():
            build = ("a CPU-only build" if torch.version.cuda is None
                     else f"CUDA {torch.version.cuda}")
            raise ConfigError(f"device={name!r}, but torch {torch.__version__} ({build}) "
                              "sees no GPU here: use --device=cpu or --device=auto")
        if n >= torch.cuda.device_count():
            raise ConfigError(f"device={name!r}, but this machine has "
                              f"{torch.cuda.device_count()} GPU(s): cuda:0 to "
                              f"cuda:{torch.cuda.device_count() - 1}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device='mps', but torch sees no Apple GPU here: "
                          "use --device=cpu or --device=auto")


def setup_distributed(cfg):
    """(rank, world_size, device, mesh): torchrun's environment, or one process without it."""
    rank, world_size, local = place()
    check_device(cfg.device, local)
    cuda = cfg.device.startswith("cuda") or cfg.device == "auto" and torch.cuda.is_available()
    if cuda:
        device = torch.device(f"cuda:{local}" if world_size > 1 else "cuda")
    else:
        device = torch.device("cpu" if cfg.device == "auto" else cfg.device)
    if world_size == 1:
        return rank, world_size, device, None
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo",
                            timeout=datetime.timedelta(seconds=cfg.dist_timeout))
    from torch.distributed.device_mesh import init_device_mesh
    if cfg.fsdp == "hsdp":  # replicate across nodes, shard within one
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if world_size % per_node:
            raise ConfigError(f"fsdp='hsdp' needs the same number of ranks on every node "
                              f"({world_size} over {per_node})")
        mesh = init_device_mesh(device.type, (world_size // per_node, per_node),
                                mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (world_size,), mesh_dim_names=("shard",))
    return rank, world_size, device, mesh


# ops whose outputs selective activation checkpointing saves (the rest is recomputed)
SAVED_OPS = {"aten::mm", "aten::addmm", "aten::_scaled_dot_product_flash_attention",
             "aten::_scaled_dot_product_cudnn_attention",
             "aten::_scaled_dot_product_efficient_attention", "nano360::flash_attn_fwd"}


def keep_matmuls(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy
    return (CheckpointPolicy.MUST_SAVE if op.name() in SAVED_OPS
            else CheckpointPolicy.PREFER_RECOMPUTE)


def recomputed(forward, selective):
    """forward with its activations recomputed in the backward (all of them, or all but the
    matmul outputs). A plain function around the checkpoint, so that torch.compile traces it."""
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts
    extra = (dict(context_fn=functools.partial(create_selective_checkpoint_contexts, keep_matmuls))
             if selective else {})

    def run(*args):
        return checkpoint(forward, *args, use_reentrant=False, **extra)
    return run


def build_model(mcfg, device, seed, cfg=None, mesh=None, bf16=False):
    """The torchtitan order: the model on the meta device, activation checkpointing and compile
    per block (cfg, a TrainConfig, also gives attn_impl and loss_chunk), FSDP2 per block then
    the root (mesh), and only then memory and init_weights(), which gives the same weights at
    any world size."""
    cfg = cfg or TrainConfig()
    with torch.device("meta"):
        model = GPT(mcfg, cfg.attn_impl, cfg.loss_chunk)
    for i, block in enumerate(model.blocks):
        every = int(cfg.ac[6:]) if cfg.ac.startswith("every:") else 1
        if cfg.ac != "none" and i % every == 0:
            block.forward = recomputed(block.forward, cfg.ac == "selective")
        if cfg.compile:
            block.compile()
    if mesh is not None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                      reduce_dtype=torch.float32)
        for block in model.blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
    model.to_empty(device=device)
    model.init_weights(seed)
    return model


def triton_adamw(cfg, device):
    return (cfg.optimizer == "adamw_triton"
            or cfg.optimizer == "auto" and device.type == "cuda" and HAVE_TRITON)


def check_kernels(cfg, device):
    """The kernel choices of cfg can run on device: one-line errors before any work is done."""
    for key, value, other in (("attn_impl", cfg.attn_impl, "sdpa"),
                              ("optimizer", cfg.optimizer, "adamw_torch")):
        if ("triton" in value and device.type != "cuda"
                and os.environ.get("TRITON_INTERPRET") != "1"):
            raise ConfigError(f"{key}={value!r} runs on CUDA, not {device}: "
                              f"use {key}='auto' or {other!r}, or set "
                              "TRITON_INTERPRET=1 to run the kernels "
                              "in Triton's (slow) interpreter")
    if cfg.optim_state_dtype == "bfloat16" and not triton_adamw(cfg, device):
        raise ConfigError("optim_state_dtype='bfloat16' needs optimizer='adamw_triton'")


def make_optimizer(model, cfg, device, torch_fused=None):
    """AdamW over the model's parameter groups: the Triton kernel (nanokernels/adamw.py) or torch's
    (torch_fused: its fused=True kernel, which the benchmarks compare against)."""
    groups = model.param_groups(cfg.weight_decay, cfg.weight_decay_all)
    if triton_adamw(cfg, device):
        from nanokernels.adamw import AdamW
        return AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                     state_dtype=getattr(torch, cfg.optim_state_dtype))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             fused=torch_fused)


def clip_grads(model, optimizer, max_norm):
    """Clip the gradients to max_norm (0: no clipping); their norm before, as a float. The
    Triton AdamW takes one reduction and clips inside its next step."""
    max_norm = max_norm or float("inf")
    if hasattr(optimizer, "clip_grad_norm_"):
        return optimizer.clip_grad_norm_(max_norm).item()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    return (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()


# dense bf16 peak per GPU from the datasheets, for MFU
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40": 362e12, "4090": 165e12}


def peak_flops(device):
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    for key, flops in PEAK_FLOPS.items():
        if key in name:
            return flops
    return 0.0
