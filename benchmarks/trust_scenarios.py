"""
The planted-code scenarios of tests/test_trust.py, one line per (file, command), against any
checkout of nano360 (the note of the [trust] issue ran it on the commit before and after):

    python benchmarks/trust_scenarios.py [CHECKOUT]      # default: this one

Each line: which file holds the payload, the command, whether the payload ran, and what the
command said ("error: ..." is a one-line error, "traceback: ..." a crash).
"""
import os, pathlib, shutil, sys, tempfile

root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
here = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [root, os.path.join(root, "tests"), os.path.join(here, "..", "tests")]
os.chdir(root)
import torch  # noqa: E402
import data, train  # noqa: E402
import test_trust as T  # noqa: E402  (this checkout's, for the payloads)
from conftest import small_args  # noqa: E402

tmp = pathlib.Path(tempfile.mkdtemp())
tiny = str(tmp / "tokens")
data.prepare(os.path.join(root, "data", "tiny"), tiny, "bpe", 512, 0.05)
base = tmp / "base"
train.main(small_args(tiny, base, "--max_steps=2", "--ckpt_interval=1", "--keep_last=5", "--eval_interval=100"))
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
        print(f"RESULT {plant:8s} | {name:22s} | code ran: {'YES' if marker.exists() else 'no ':3s} | {said[:160]}", flush=True)
shutil.rmtree(tmp, ignore_errors=True)
