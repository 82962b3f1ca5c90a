"""
A whole training step of a config on a GPU, against the model most users would otherwise run.

    python benchmarks/train_bench.py train [config/neo_1b.py] [--steps=10] [--write]
                                           [-- --key=value ...]
        a training step of the config on random tokens: tokens/s, MFU against the measured
        bf16 matmul peak and against the GPU's datasheet peak (parallel.PEAK_FLOPS), peak memory,
        ms of forward, backward and optimizer; each optimisation toggled off in turn (Triton
        attention, Triton AdamW, compile, activation checkpointing as configured vs full), and
        transformers' LlamaForCausalLM of the same shape with fused torch AdamW, bf16 autocast
        and SDPA.
    python benchmarks/train_bench.py layers [config/neo7b.py] [--layers=1,3] [--gpus=8]
                                            [-- --key=value ...]
        training steps of the config at two depths: ms per layer, the rest, and the full
        depth's tokens/s per GPU on --gpus GPUs under FSDP, the arithmetic printed.

--device=cpu (with TRITON_INTERPRET=1) runs either on a CPU, slowly, to check the harness;
--out=DIR writes the raw JSON elsewhere than benchmarks/; --write appends the table to
BENCHMARKS.md.
"""
import argparse, os, sys

import numpy as np

import harness
from harness import ROOT, environment, save, timed

VARIANTS = {  # each optimisation toggled in turn against "all on": the config as given
    "all on": {},
    "sdpa attention": dict(attn_impl="sdpa"),
    "torch fused adamw": dict(optimizer="adamw_torch"),
    "no compile": dict(compile=False),
    "full recompute": dict(ac="full"),
}
PEER = "transformers peer"
NVLINK = 450e9  # bytes/s one H100 moves over NVLink, for the bound on FSDP's communication


# ----------------------------------------------------------------------------- peaks and MFU

def matmul_peak(device):
    """Measured bf16 FLOP/s of an 8192^3 matmul: the ceiling MFU is also quoted against."""
    import torch
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    return 2 * 8192 ** 3 / timed(lambda: a @ a, device) * 1e3


def peaks(device, env):
    """(measured, datasheet) bf16 FLOP/s of device, 0 where unknown (a CPU); noted in env."""
    import torch
    import parallel
    measured = matmul_peak(device) if device == "cuda" else 0.0
    datasheet = parallel.peak_flops(torch.device(device))
    env["matmul_peak_tflops"], env["datasheet_peak_tflops"] = measured / 1e12, datasheet / 1e12
    return measured, datasheet


def mfu(flops_per_token, tok_s, peak):
    return flops_per_token * tok_s / peak if peak else None


def mfu_heading(datasheet):
    return f"MFU ({datasheet / 1e12:.0f} TFLOP/s)" if datasheet else "MFU (datasheet)"


# ----------------------------------------------------------------------------- one training step

def step_timer(run, model, optimizer, x, device, clip):
    """One training step as (forward, backward, optimizer) milliseconds."""
    import time
    import torch
    from parallel import clip_grads
    marks = []

    def mark():
        if device == "cuda":
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
    mark()
    loss = run(x[:, :-1], x[:, 1:])
    loss = loss if torch.is_tensor(loss) else loss.loss
    mark()
    loss.backward()
    mark()
    clip_grads(model, optimizer, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mark()
    return [1000 * (b - a) for a, b in zip(marks, marks[1:])]


def llama_peer(mcfg, device):
    """The model most users would otherwise run: transformers' LlamaForCausalLM of the same
    shape; (model, fn(idx, targets) -> output)."""
    import transformers
    cfg = transformers.LlamaConfig(
        vocab_size=mcfg.vocab_size, hidden_size=mcfg.d_model, intermediate_size=mcfg.ffn_hidden,
        num_hidden_layers=mcfg.n_layer, num_attention_heads=mcfg.n_head,
        num_key_value_heads=mcfg.n_kv_head, head_dim=mcfg.head_dim, rms_norm_eps=mcfg.norm_eps,
        max_position_embeddings=mcfg.max_seq_len, rope_theta=mcfg.rope_theta,
        tie_word_embeddings=mcfg.tie_embeddings, attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(cfg).to(device)

    def run(idx, targets):  # transformers shifts the labels itself: the inputs are the labels
        return model(input_ids=idx, labels=idx)
    return model, run


def contestant(name, cfg, mcfg, device):
    """(model, fn(idx, targets) -> loss, optimizer, FLOPs per token): ours as cfg builds it,
    or the transformers peer of its shape."""
    import torch
    import parallel
    from model import GPT
    if name == PEER:
        model, run = llama_peer(mcfg, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=device == "cuda")
        with torch.device("meta"):  # the same arithmetic as ours, counted the same way
            flops = GPT(mcfg).estimate_flops(cfg.seq_len)
        return model, run, optimizer, flops
    model = parallel.build_model(mcfg, device, cfg.seed, cfg)
    optimizer = parallel.make_optimizer(model, cfg, torch.device(device), torch_fused=device == "cuda")
    return model, model, optimizer, model.estimate_flops(cfg.seq_len)


def measure(name, config, overrides, steps, warmup, device, peak):
    """One row: a training step of config (+ overrides) on random tokens, median over steps
    after warmup: tokens/s, MFU against the (measured, datasheet) peak, forward / backward /
    optimizer ms, peak memory. name: PEER for LlamaForCausalLM of that shape."""
    import torch
    from config import load_config, resolve_vocab, uses_bf16
    from model import autocast
    from tokenizer import tokenizer_size
    cfg, mcfg = load_config([config, f"--device={device}", *overrides])
    resolve_vocab(mcfg, tokenizer_size(cfg))
    gen = torch.Generator().manual_seed(0)
    shape = (cfg.batch_size, cfg.seq_len + 1)
    x = torch.randint(0, mcfg.vocab_size, shape, generator=gen).to(device)
    model, run, optimizer, flops = contestant(name, cfg, mcfg, device)
    amp = autocast(torch.device(device), uses_bf16(cfg, device))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        with amp:
            t = step_timer(run, model, optimizer, x, device, cfg.grad_clip)
        if i >= warmup:
            times.append(t)
    fwd, bwd, opt = (float(np.median([t[k] for t in times])) for k in range(3))
    tokens = cfg.batch_size * cfg.seq_len
    tok_s = tokens / ((fwd + bwd + opt) / 1000)
    cuda = device == "cuda"
    row = dict(variant=name, tok_per_s=tok_s, mfu_measured=mfu(flops, tok_s, peak[0]),
               mfu_datasheet=mfu(flops, tok_s, peak[1]), fwd_ms=fwd, bwd_ms=bwd, opt_ms=opt,
               peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
               tokens_per_step=tokens, flops_per_token=flops, n_layer=mcfg.n_layer,
               params=sum(p.numel() for p in model.parameters()))
    del model, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return row


# ------------------------------------------------------------ train: each optimisation off in turn

def pct(v):
    return f"{100 * v:8.1f}%" if v is not None else f"{'-':>9s}"


def train_bench(config, overrides, steps, warmup, device, variants, peer, out, write):
    env = environment(device)
    peak = peaks(device, env)
    print(f"{env['device']} | torch {env['torch']} | {config} {' '.join(overrides)} | "
          f"{steps} steps after {warmup}"
          + (f" | bf16 matmul peak measured {peak[0] / 1e12:.0f} TFLOP/s" if peak[0] else ""))
    spec = f"MFU {peak[1] / 1e12:.0f}" if peak[1] else "MFU spec"
    print(f"{'variant':20s} {'tok/s':>9s} {'MFU meas.':>9s} {spec:>8s} "
          f"{'peak GiB':>8s} {'fwd ms':>7s} {'bwd ms':>7s} {'opt ms':>7s}")
    table = [("variant", "variant"), ("tok/s", "tok_per_s"),
             ("MFU (measured peak)", "mfu_measured"), (mfu_heading(peak[1]), "mfu_datasheet"),
             ("peak GiB", "peak_gib"), ("fwd ms", "fwd_ms"), ("bwd ms", "bwd_ms"),
             ("opt ms", "opt_ms")]
    kind, rows = f"train_step_{os.path.basename(config)[:-3]}", []
    # "all on" and the peer first: a run stopped at its time limit has the comparison that matters
    for name in variants[:1] + ([PEER] if peer else []) + variants[1:]:
        extra = [f"--{k}={v}" for k, v in VARIANTS.get(name, {}).items()]
        row = measure(name, config, overrides + extra, steps, warmup, device, peak)
        rows.append(row)
        print(f"{name:20s} {row['tok_per_s']:9,.0f} {pct(row['mfu_measured'])} "
              f"{pct(row['mfu_datasheet'])[1:]} {row['peak_gib'] or 0:8.1f} {row['fwd_ms']:7.1f} "
              f"{row['bwd_ms']:7.1f} {row['opt_ms']:7.1f}", flush=True)
        save(kind, env, rows, table, out, False, "", quiet=True)  # what is done survives a timeout
    if peer and len(rows) > 1:
        ratio = rows[0]["tok_per_s"] / rows[1]["tok_per_s"]
        print(f"nano360 (all on) / transformers peer: {ratio:.2f}x tokens/s")
    return save(kind, env, rows, table, out, write,
                f"{config} {' '.join(overrides)}, {steps} steps after {warmup}")


# ---------------------------------------------------------------- layers: two depths, extrapolated

def between(a, b, key, L):
    """a[key] at L layers, on the line through depths a and b."""
    per_layer = (b[key] - a[key]) / (b["n_layer"] - a["n_layer"])
    return a[key] + per_layer * (L - a["n_layer"]), per_layer


def extrapolate(a, b, L, gpus, peak):
    """The full depth L on gpus GPUs from rows a and b at two depths. Forward + backward grow
    by a fixed time per layer; the rest (embedding, final norm, head and loss) is what is left
    at depth 0; each GPU steps 1/gpus of the optimizer's parameters. Communication is assumed
    hidden behind compute, and its bound given if it is not."""
    fb = lambda r: r["fwd_ms"] + r["bwd_ms"]
    added = b["n_layer"] - a["n_layer"]
    per_layer = (fb(b) - fb(a)) / added
    rest = fb(a) - per_layer * a["n_layer"]
    opt_full, opt_layer = between(a, b, "opt_ms", L)
    opt_full /= gpus
    step = rest + per_layer * L + opt_full
    params = a["params"] + (b["params"] - a["params"]) // added * (L - a["n_layer"])
    flops = between(a, b, "flops_per_token", L)[0]
    tok_s = a["tokens_per_step"] / (step / 1000)
    # 2 all-gathers + 1 reduce-scatter of bf16 parameters over NVLink
    comm_ms = 3 * 2 * params * (gpus - 1) / gpus / NVLINK * 1000
    return dict(variant=f"{L} layers on {gpus} GPUs (extrapolated)",
                layers_measured=[a["n_layer"], b["n_layer"]], per_layer_ms=per_layer,
                rest_ms=rest, opt_per_layer_ms=opt_layer, opt_full_per_gpu_ms=opt_full,
                step_ms=step, params=params, flops_per_token=flops, tok_per_s=tok_s,
                mfu_datasheet=mfu(flops, tok_s, peak[1]), mfu_measured=mfu(flops, tok_s, peak[0]),
                comm_bound_ms=comm_ms,
                tok_per_s_if_comm_not_hidden=a["tokens_per_step"] / ((step + comm_ms) / 1000))


def show_arithmetic(r, L, gpus, tokens, datasheet):
    print(f"per layer {r['per_layer_ms']:.2f} ms fwd+bwd; the rest {r['rest_ms']:.2f} ms; "
          f"optimizer {r['opt_per_layer_ms']:.3f} ms per layer")
    mfu_text = ""
    if r["mfu_datasheet"]:
        mfu_text = f", MFU {100 * r['mfu_datasheet']:.1f}% of {datasheet / 1e12:.0f} TFLOP/s"
    print(f"{L} layers ({r['params'] / 1e9:.2f}B parameters) on {gpus} GPUs: "
          f"{r['rest_ms']:.1f} + {L} x {r['per_layer_ms']:.2f} + optimizer "
          f"{r['opt_full_per_gpu_ms']:.1f} ms (1/{gpus} of the parameters) = {r['step_ms']:.1f} ms "
          f"per {tokens} tokens -> {r['tok_per_s']:,.0f} tokens/s per GPU{mfu_text}")
    print(f"if FSDP's communication were not hidden: + {r['comm_bound_ms']:.0f} ms "
          f"(3 x {2 * r['params'] / 1e9:.1f} GB x {gpus - 1}/{gpus} at {NVLINK / 1e9:.0f} GB/s) "
          f"-> {r['tok_per_s_if_comm_not_hidden']:,.0f} tokens/s per GPU")


def layers_bench(config, overrides, layers, steps, warmup, gpus, device, out, write):
    """A wide model with few layers, timed at two depths, extrapolated to its full depth on
    gpus GPUs under FSDP (see extrapolate)."""
    from config import load_config
    env = environment(device)
    peak = peaks(device, env)
    L = load_config([config, f"--device={device}", *overrides])[1].n_layer
    rows = []
    for n in layers:
        r = measure(f"{n} layers", config, overrides + [f"--n_layer={n}"], steps, warmup, device,
                    peak)
        rows.append(r)
        print(f"{n} layers: fwd+bwd {r['fwd_ms'] + r['bwd_ms']:.1f} ms, optimizer "
              f"{r['opt_ms']:.1f} ms, {r['params']:,} parameters", flush=True)
    a, b = rows
    result = extrapolate(a, b, L, gpus, peak)
    rows.append(result)
    show_arithmetic(result, L, gpus, a["tokens_per_step"], peak[1])
    table = [("variant", "variant"), ("tok/s per GPU", "tok_per_s"),
             (mfu_heading(peak[1]), "mfu_datasheet"), ("fwd ms", "fwd_ms"), ("bwd ms", "bwd_ms"),
             ("opt ms", "opt_ms")]
    return save(f"layers_{os.path.basename(config)[:-3]}", env, rows, table, out, write,
                f"{config} at {layers} layers, extrapolated to {L} on {gpus} GPUs")


# ----------------------------------------------------------------------------- the command line

def bench(sub, name, text, config):
    """A subcommand: a config, then the options both share."""
    p = sub.add_parser(name, help=text)
    p.add_argument("config", nargs="?", default=os.path.join(ROOT, "config", config),
                   help=f"the config (default config/{config})")
    p.add_argument("--steps", type=int, default=10, help="steps timed")
    p.add_argument("--warmup", type=int, default=3, help="steps run first, not timed")
    return harness.measure_options(p)


def parser():
    ap = argparse.ArgumentParser(prog="python benchmarks/train_bench.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = bench(sub, "train", "a training step, each optimisation off in turn, and the peer",
              "neo_1b.py")
    p.add_argument("--variants", default=",".join(VARIANTS), help="of " + ", ".join(VARIANTS))
    p.add_argument("--no_peer", action="store_true", help="skip transformers' LlamaForCausalLM")
    p = bench(sub, "layers", "two depths, extrapolated to the full depth on N GPUs", "neo7b.py")
    p.add_argument("--layers", default="1,3", help="the two depths timed")
    p.add_argument("--gpus", type=int, default=8, help="the GPUs the full model is extrapolated to")
    return ap


def main(argv):
    argv, overrides = harness.split_overrides(argv)
    args = parser().parse_args(argv)
    harness.use_device(args.device, args.what)
    if args.what == "train":
        variants = [v for v in args.variants.split(",") if v]
        return train_bench(args.config, overrides, args.steps, args.warmup, args.device, variants,
                           not args.no_peer, args.out, args.write)
    layers = [int(n) for n in args.layers.split(",")]
    return layers_bench(args.config, overrides, layers, args.steps, args.warmup, args.gpus,
                        args.device, args.out, args.write)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
