"""
The planted-code scenarios of tests/test_trust.py, one line per (file, command), against any
checkout of nano360 (the note of the [trust] issue ran it on the commit before and after):

    python benchmarks/trust_scenarios.py [CHECKOUT]      # default: this one

Each line: which file holds the payload, the command, whether the payload ran, and what the
command said ("error: ..." is a one-line error, "traceback: ..." a crash). The payloads and the
commands come from this checkout's tests/helpers.py; the code they run against is CHECKOUT's.
"""
import os, pathlib, shutil, sys, tempfile

root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [root, os.path.join(here, "..", "tests")]
os.chdir(root)
import torch  # noqa: E402
import config, data, train  # noqa: E402  (CHECKOUT's)
import helpers as T  # noqa: E402  (this checkout's: the payloads and the commands)
sys.path.insert(0, root)  # CHECKOUT's modules first again (helpers put this checkout's on the path)


def checkout_args(argv):
    """small_args for CHECKOUT: its own toy config, and the key names of its time (docs_dir was
    raw_data, tokens_dir data_dir)."""
    argv = [os.path.join(root, "config", "toy.py")] + argv[1:]
    if hasattr(config.TrainConfig, "tokens_dir"):
        return argv
    return [a.replace("--tokens_dir=", "--data_dir=").replace("--docs_dir=", "--raw_data=") for a in argv]


T.small_args = lambda *a, _small=T.small_args: checkout_args(_small(*a))
tmp = pathlib.Path(tempfile.mkdtemp())
tiny = str(tmp / "tokens")
if hasattr(data, "prepare"):  # before the tokenize stage had one name
    data.prepare(os.path.join(root, "data", "tiny"), tiny, "bpe", 512, 0.05)
else:
    T.tokenize_tiny(tiny)
base = tmp / "base"
train.main(T.small_args(tiny, base, "--max_steps=2", "--ckpt_interval=1", "--keep_last=5", "--eval_interval=100"))
for plant in ("metadata", "entries", "rng"):
    for name, command in T.COMMANDS.items():
        if plant == "rng" and name != "train.py --resume":
            continue  # only a resume reads rng_*.pt
        d = tmp / f"{plant}-{name.replace(' ', '_')}"
        shutil.copytree(base, d)
        marker, ckpt = d / "pwned", str(d / "ckpt_0000002")
        if plant == "metadata":
            open(os.path.join(ckpt, ".metadata"), "wb").write(T.dotted_global(marker))
        elif plant == "entries":
            T.plant_entries(ckpt, marker)
        else:
            torch.save(T.Evil(marker), os.path.join(ckpt, "rng_0.pt"))
        T.reseal(ckpt)
        said = T.outcome(lambda: command(tiny, d, ckpt))
        ran = "YES" if marker.exists() else "no "
        print(f"RESULT {plant:8s} | {name:22s} | code ran: {ran:3s} | {said[:160]}", flush=True)
shutil.rmtree(tmp, ignore_errors=True)
