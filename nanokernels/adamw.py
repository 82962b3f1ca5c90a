"""
Fused AdamW in Triton: one pass over memory per step, many tensors per launch.

    opt = AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    norm = opt.clip_grad_norm_(1.0)     # optional: one reduction; the scaling happens inside step()
    opt.step()

The semantics are torch.optim.AdamW's (decoupled weight decay, bias correction, a step count
per parameter; parameters without a gradient are skipped), and so is the state dict: "step",
"exp_avg", "exp_avg_sq" per parameter and the same group keys, so a checkpoint moves between
this optimizer and torch's in both directions.

How it works: each element is read once (param, grad, exp_avg, exp_avg_sq) and written once
(param, exp_avg, exp_avg_sq), 28 bytes per fp32 parameter. One launch covers every tensor of
the same dtypes: a table holds each tensor's addresses and hyperparameters (per group lr and
weight decay, per parameter bias corrections), and a cached chunk list maps each program to a
BLOCK-sized piece of one tensor, so hundreds of parameters cost one launch, not hundreds.
On FSDP2 the parameters are DTensors and the kernel updates their local shards.

state_dtype=torch.bfloat16 keeps exp_avg and exp_avg_sq in bf16 (12 bytes of state per
parameter instead of 16, 20 bytes of traffic instead of 28): the update is computed in fp32
and the moments are rounded to bf16 (8 bits of mantissa) when stored; over 50 steps the
parameter changes stay within 2% of fp32 AdamW's (tests/test_adamw.py).
"""
import math
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK = 2048  # elements per program
TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _adamw_update(p_ptr, g_ptr, m_ptr, v_ptr, offs, mask, h_ptr, scale,
                  P_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr):
    # the tensor's hyperparameters, worked out on the host in float64 as torch does
    decay = tl.load(h_ptr)              # 1 - lr * weight_decay
    w1 = tl.load(h_ptr + 1)             # 1 - beta1
    beta2 = tl.load(h_ptr + 2)
    w2 = tl.load(h_ptr + 3)             # 1 - beta2
    eps = tl.load(h_ptr + 4)
    step_size = tl.load(h_ptr + 5)      # lr / (1 - beta1^step)
    bc2_sqrt = tl.load(h_ptr + 6)       # sqrt(1 - beta2^step)
    p = tl.load(p_ptr + offs, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32) * scale  # gradient clipping, fused
    m = tl.load(m_ptr + offs, mask=mask).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask).to(tl.float32)
    p = p * decay
    m = m + w1 * (g - m)  # torch's lerp
    v = v * beta2 + w2 * g * g
    p = p - step_size * (m / (tl.sqrt(v) / bc2_sqrt + eps))
    tl.store(p_ptr + offs, p.to(P_DTYPE), mask=mask)
    tl.store(m_ptr + offs, m.to(S_DTYPE), mask=mask)
    tl.store(v_ptr + offs, v.to(S_DTYPE), mask=mask)


@triton.jit
def _adamw_kernel(ADDR, HYPER, CHUNK_TENSOR, CHUNK_START, GRAD_SCALE,
                  P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr,
                  BLOCK: tl.constexpr):
    c = tl.program_id(0)
    t = tl.load(CHUNK_TENSOR + c)
    start = tl.multiple_of(tl.load(CHUNK_START + c), BLOCK)
    offs = start + tl.arange(0, BLOCK)
    # the tensor's addresses: param, grad, exp_avg, exp_avg_sq (16-byte aligned, checked on the
    # host, so that loads can be 128 bits wide), and its length
    p_ptr = tl.multiple_of(tl.load(ADDR + t * 5).to(tl.pointer_type(P_DTYPE)), 16)
    g_ptr = tl.multiple_of(tl.load(ADDR + t * 5 + 1).to(tl.pointer_type(G_DTYPE)), 16)
    m_ptr = tl.multiple_of(tl.load(ADDR + t * 5 + 2).to(tl.pointer_type(S_DTYPE)), 16)
    v_ptr = tl.multiple_of(tl.load(ADDR + t * 5 + 3).to(tl.pointer_type(S_DTYPE)), 16)
    n = tl.load(ADDR + t * 5 + 4)
    scale = tl.load(GRAD_SCALE)
    if start + BLOCK <= n:  # a whole chunk: no mask, which keeps the loads and stores wide
        _adamw_update(p_ptr, g_ptr, m_ptr, v_ptr, offs, None, HYPER + t * 8, scale,
                      P_DTYPE, S_DTYPE)
    else:  # the tail of a tensor
        _adamw_update(p_ptr, g_ptr, m_ptr, v_ptr, offs, offs < n, HYPER + t * 8, scale,
                      P_DTYPE, S_DTYPE)


@triton.jit
def _sumsq_kernel(ADDR, CHUNK_TENSOR, CHUNK_START, OUT, G_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    # one partial sum of squared gradients per chunk; the partials are summed by torch
    c = tl.program_id(0)
    t = tl.load(CHUNK_TENSOR + c)
    offs = tl.multiple_of(tl.load(CHUNK_START + c), BLOCK) + tl.arange(0, BLOCK)
    g_ptr = tl.multiple_of(tl.load(ADDR + t * 2).to(tl.pointer_type(G_DTYPE)), 16)
    g = tl.load(g_ptr + offs, mask=offs < tl.load(ADDR + t * 2 + 1), other=0.0).to(tl.float32)
    tl.store(OUT + c, tl.sum(g * g, 0))


def _local(t):
    # an FSDP2 DTensor's shard on this rank, or the tensor itself
    return t.to_local() if hasattr(t, "to_local") else t


def _aligned(g):
    # the kernels read 16 bytes at a time: a gradient that is a strided or misaligned view is copied
    return (g if g.is_contiguous() and g.data_ptr() % 16 == 0
            else g.clone(memory_format=torch.contiguous_format))


def _check_device(t):
    if not INTERPRET and not t.is_cuda:
        raise ValueError(f"AdamW (Triton) needs CUDA tensors, got a tensor on {t.device}; "
                         "use optimizer='adamw_torch' on a CPU, or set TRITON_INTERPRET=1 before "
                         "triton is imported to run the kernel (slowly)")


class AdamW(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 state_dtype=torch.float32):
        if (not 0.0 <= lr or not 0.0 <= eps or not all(0.0 <= b < 1.0 for b in betas)
                or not 0.0 <= weight_decay):
            raise ValueError(f"AdamW: invalid lr={lr}, betas={betas}, eps={eps} or "
                             f"weight_decay={weight_decay}")
        if state_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError("AdamW: state_dtype must be torch.float32 or torch.bfloat16, "
                             f"got {state_dtype}")
        # the group keys of torch.optim.AdamW, so that state dicts load into it unchanged
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=False, maximize=False, foreach=None, capturable=False,
                        differentiable=False, fused=None, decoupled_weight_decay=True)
        super().__init__(params, defaults)
        self.state_dtype = state_dtype
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if not p.is_floating_point() or p.dtype not in TL_DTYPE:
                    raise ValueError(f"AdamW: parameter {pi} of group {gi} "
                                     f"(shape {tuple(p.shape)}) is {p.dtype}; only float32, "
                                     "bfloat16 and float16 parameters can be optimized")
        self._chunks = {}  # (numels, device) -> the chunk list of one launch
        self._grad_scale = None

    def _chunk_list(self, numels, device):
        key = (tuple(numels), str(device))
        if key not in self._chunks:
            counts = torch.tensor([-(-n // BLOCK) for n in numels])
            tensor = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), counts)
            first = torch.cumsum(counts, 0) - counts  # the first chunk of each tensor
            start = (torch.arange(len(tensor)) - first[tensor.long()]) * BLOCK
            self._chunks[key] = (tensor.to(device), start.to(device))
        return self._chunks[key]

    def _params_with_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise ValueError("AdamW does not support sparse gradients "
                                         f"(parameter of shape {tuple(p.shape)})")
                    yield group, p

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm):
        """The global L2 norm of all gradients (one reduction, summed over FSDP shards), and the
        clipping factor min(1, max_norm / (norm + 1e-6)) that the next step() applies to them,
        as torch.nn.utils.clip_grad_norm_ does. Returns the norm as a device tensor (no sync)."""
        grads = [_local(p.grad) for _, p in self._params_with_grad()]
        if not grads:
            return torch.zeros(())
        by_dtype = {}
        for g in grads:
            if g.numel():
                _check_device(g)
                by_dtype.setdefault((g.dtype, g.device), []).append(_aligned(g))
        device = grads[0].device
        total = torch.zeros((), device=device, dtype=torch.float32)
        for (dtype, dev), gs in by_dtype.items():
            chunk_tensor, chunk_start = self._chunk_list([g.numel() for g in gs], dev)
            addr = torch.tensor([x for g in gs for x in (g.data_ptr(), g.numel())],
                                dtype=torch.int64).to(dev)
            partial = torch.empty(len(chunk_tensor), device=dev, dtype=torch.float32)
            _sumsq_kernel[(len(chunk_tensor),)](addr, chunk_tensor, chunk_start, partial,
                                                G_DTYPE=TL_DTYPE[dtype], BLOCK=BLOCK, num_warps=8)
            total += partial.sum()
        first = next(self._params_with_grad())[1].grad
        # FSDP2: sum the squares over the mesh dims that shard, not those that replicate
        if hasattr(first, "device_mesh"):
            for dim, placement in enumerate(first.placements):
                if placement.is_shard():
                    torch.distributed.all_reduce(total, group=first.device_mesh.get_group(dim))
        norm = total.sqrt()
        self._grad_scale = (max_norm / (norm + 1e-6)).clamp(max=1.0).reshape(1)
        return norm

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # (device, dtypes) -> ([addresses], [hyperparameters], [numels], [tensors kept alive])
        launches = {}
        for group, p in self._params_with_grad():
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, dtype=self.state_dtype,
                                                    memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=self.state_dtype,
                                                       memory_format=torch.preserve_format)
            state["step"] += 1
            step = state["step"].item()
            lp, lg, lm, lv = (_local(t) for t in (p, p.grad, state["exp_avg"], state["exp_avg_sq"]))
            if lp.numel() == 0:  # an FSDP rank may hold no part of a small parameter
                continue
            _check_device(lp)
            if not (lp.is_contiguous() and lm.is_contiguous() and lv.is_contiguous()) or \
                    any(t.data_ptr() % 16 for t in (lp, lm, lv)):
                raise ValueError("AdamW (Triton) needs contiguous, 16-byte aligned parameters "
                                 f"and state; the parameter of shape {tuple(p.shape)} is a view "
                                 "that is not")
            lg = _aligned(lg)
            lr, (beta1, beta2) = group["lr"], group["betas"]
            key = (lp.device, lp.dtype, lg.dtype, lm.dtype)
            addr, hyper, numels, alive = launches.setdefault(key, ([], [], [], []))
            alive.append(lg)  # a contiguous copy must outlive the launch that reads its address
            addr += [lp.data_ptr(), lg.data_ptr(), lm.data_ptr(), lv.data_ptr(), lp.numel()]
            hyper += [1 - lr * group["weight_decay"], 1 - beta1, beta2, 1 - beta2, group["eps"],
                      lr / (1 - beta1 ** step), math.sqrt(1 - beta2 ** step), 0.0]
            numels.append(lp.numel())
        for (device, pd, gd, sd), (addr, hyper, numels, _) in launches.items():
            chunk_tensor, chunk_start = self._chunk_list(numels, device)
            scale = (self._grad_scale.to(device) if self._grad_scale is not None
                     else torch.ones(1, device=device))
            _adamw_kernel[(len(chunk_tensor),)](
                torch.tensor(addr, dtype=torch.int64).to(device),
                torch.tensor(hyper, dtype=torch.float32).to(device),
                chunk_tensor, chunk_start, scale,
                P_DTYPE=TL_DTYPE[pd], G_DTYPE=TL_DTYPE[gd], S_DTYPE=TL_DTYPE[sd],
                BLOCK=BLOCK, num_warps=8)
        self._grad_scale = None
        return loss

    def load_state_dict(self, state_dict):
        for group in state_dict["param_groups"]:
            if group.get("amsgrad") or group.get("maximize"):
                raise ValueError("AdamW (Triton): this state dict uses amsgrad or maximize, "
                                 "which it does not implement")
        super().load_state_dict(state_dict)
        # steps live on the CPU (torch's fused AdamW keeps them on the GPU)
        for state in self.state.values():
            # a copy: never shared with the dict loaded
            state["step"] = torch.tensor(float(state["step"]))
            for k in ("exp_avg", "exp_avg_sq"):
                state[k] = state[k].to(self.state_dtype)
