"""
What trust costs: saving and loading a checkpoint with nano360's Checkpointer (checksums, safe
load) against plain torch.distributed.checkpoint, on the same model and optimizer state.

    python benchmarks/checkpoint_bench.py [config/neo_125m.py] [--dir /tmp/ckpt_bench]

Prints one table: seconds per save and per load (best of 3), the checkpoint's size, and the
ratio to plain DCP. One process, CPU tensors: what a single rank pays for its own shard.
"""
import os, shutil, sys, time, warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.state_dict import get_state_dict  # noqa: E402

import checkpoint, parallel  # noqa: E402
from config import load_config, resolve_vocab  # noqa: E402

warnings.filterwarnings("ignore")


def best(fn, n=3):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv):
    where = argv[argv.index("--dir") + 1] if "--dir" in argv else "/tmp/ckpt_bench"
    cfg_file = next((a for a in argv if a.endswith(".py")), "config/neo_125m.py")
    cfg, mcfg = load_config([cfg_file, "--device=cpu"])
    resolve_vocab(mcfg, 64_000)
    model = parallel.build_model(mcfg, torch.device("cpu"), 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():  # AdamW state exists, as after a step
        p.grad = torch.zeros_like(p)
    opt.step()
    shutil.rmtree(where, ignore_errors=True)
    os.makedirs(where)
    ours = checkpoint.Checkpointer(os.path.join(where, "ours"), keep_last=1)
    os.makedirs(ours.out_dir)
    plain = os.path.join(where, "plain")
    meta = dict(step=1, config={})

    def plain_save():
        msd, osd = get_state_dict(model, opt)
        dcp.save(dict(model=msd, optim=osd), checkpoint_id=plain)

    def plain_load():
        msd, osd = get_state_dict(model, opt)
        dcp.load(dict(model=msd, optim=osd), checkpoint_id=plain)
    rows = [("plain DCP (torch.distributed.checkpoint)", best(plain_save), best(plain_load))]
    path = ours.save(1, model, opt, meta)
    rows.append(("nano360 Checkpointer: checksums + safe load", best(lambda: ours.save(1, model, opt, meta)),
                 best(lambda: ours.load(path, model, opt))))
    rows.append(("  of which damage() (sha256 of every file)", None, best(lambda: checkpoint.damage(path))))
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    print(f"model {cfg_file}: {model.num_params():,} parameters, AdamW fp32; checkpoint {size / 2**30:.2f} GiB; "
          f"torch {torch.__version__}, {os.cpu_count()} cores")
    print("| what | save (s) | load (s) | save / plain | load / plain |")
    print("|---|---|---|---|---|")
    for name, s, l in rows:
        r = lambda x, base: f"{x / base:.2f}" if x is not None else ""
        print(f"| {name} | {'' if s is None else f'{s:.2f}'} | {l:.2f} | {r(s, rows[0][1])} | {r(l, rows[0][2])} |")
    shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
