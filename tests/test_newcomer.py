"""The README walked as a new user walks it, in a fresh copy of the project: the commands run as
written, in order, and each does what the page says. Only the models are shrunk (config/toy.py and
config/demo_small.py get smaller sizes appended), so the walk takes a minute and not an hour; the
demo corpus is data/tiny's documents (fetch-demo downloads 66 MB: tests/test_pipeline.py checks it
on a local archive); pip is what .ci/run runs, with the README's set-up lines."""
import json, os, re, shutil, subprocess, sys

from helpers import ROOT

SMALL = """
# the walk's shrunken model (tests/test_newcomer.py)
n_layer = 1
d_model = 32
n_head = 2
ffn_hidden = 64
seq_len = 32
max_seq_len = 64
batch_size = 4
tokenizer_vocab = 512
eval_seqs = 4
sample_tokens = 16
"""


def page(name):
    return open(os.path.join(ROOT, name), encoding="utf-8").read()


def commands(text):
    """The commands of a page's ```bash blocks, continuation lines joined, comments cut."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                out.append(" ".join(line.split()))
    return out


def shell(copy, cmd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    r = subprocess.run(cmd, shell=True, cwd=copy, capture_output=True, text=True, timeout=timeout,
                       env={**env, "PYTHONPATH": "", "PATH": os.path.dirname(sys.executable) + os.pathsep + env["PATH"]})
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def fresh_copy(tmp_path):
    """The project's files (tracked, or new and not ignored) in a git repository of their own."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    copy = tmp_path / "nano360"
    for f in files:
        if os.path.isfile(os.path.join(ROOT, f)):
            os.makedirs(os.path.dirname(copy / f), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, f), copy / f)
    with open(copy / "config" / "toy.py", "a") as f:
        f.write(SMALL)
    with open(copy / "config" / "demo_small.py", "a") as f:  # data/tiny's sources stand in for the demo's
        f.write(SMALL + "max_steps = 6\nckpt_interval = 3\neval_interval = 3\nlog_interval = 1\n"
                "mixture = [(0, {'en': 1, 'zh': 1, 'code': 1}), (4, {'code': 1})]\n")
    os.makedirs(copy / "data" / "demo" / "raw")
    for name in ("en", "zh", "code"):
        shutil.copy(copy / "data" / "tiny" / f"{name}.jsonl", copy / "data" / "demo" / "raw" / f"{name}.jsonl")
    for cmd in ("git init -q", "git add -A", "git -c user.name=t -c user.email=t@t commit -qm copy"):
        subprocess.run(cmd.split(), cwd=copy, check=True, capture_output=True)
    return copy


def test_the_readme_walked_by_a_new_user(tmp_path):
    readme, gpu = commands(page("README.md")), commands(page("docs/gpu.md"))
    walk = [
        "python train.py",  # train the toy
        "python train.py",  # again: it says the run is complete
        "torchrun --standalone --nproc_per_node=2 train.py --max_steps=600 --schedule_steps=400",
        "TRITON_INTERPRET=1 python train.py --attn_impl=triton --n_layer=1 --seq_len=64 --batch_size=2 "
        "--max_steps=2 --warmup_steps=1 --eval_seqs=2 --sample_tokens=0 --out_dir=out/triton",
        "python eval.py out/toy --tasks=data/evals",
        'python eval.py sample out/toy --prompt="子曰："',
        "python eval.py export out/toy/ckpt_0000400 out/hf_toy",
        "python eval.py plot out/toy",
        "python curate.py pipeline config/demo_small.py",
        "python train.py config/demo_small.py",
        "python release.py config/demo_small.py out/demo_release --tasks=data/evals",
        "python release.py verify out/demo_release --shards=data/demo/tokens_16k",
    ]
    setup = ["pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
             "pip install -r requirements.txt && python train.py", "python -m pytest"]
    for cmd in walk[2:] + setup:  # the page says them as they are run here (python train.py: in the set-up)
        assert cmd in readme + gpu, cmd
    ci = page(".ci/run")  # and CI runs the set-up as the page writes it
    assert "pip install --quiet torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in ci
    assert "pip install --quiet -r requirements.txt" in ci and ci.rstrip().endswith("python -m pytest -q")

    copy = fresh_copy(tmp_path)
    r = shell(copy, walk[0])
    header = next(l for l in r.stdout.splitlines() if "parameters |" in l)
    assert re.fullmatch(r"[\d,]+ parameters \| 128 tokens/step \(4 x 32, 1 micro-batch of 4 x 1 rank\) \| "
                        r"[\d,]+ samples/epoch \| cpu \(\w+\), fp32", header), header
    assert "step    400 | val code" in r.stdout and "--- '子曰：' ---" in r.stdout
    assert "skipped" not in r.stdout + r.stderr  # no note about the project's own files in data/tiny
    assert shell(copy, walk[1]).stdout == (
        "out/toy/ckpt_0000400 is at max_steps: nothing to train (raise --max_steps to continue)\n")

    r = shell(copy, walk[2])
    said = r.stdout + r.stderr
    assert "resuming from out/toy/ckpt_0000400 at step 400 (saved by 1 rank, now 2)" in said
    assert "step    600 | val" in said and "warning" not in said
    assert said.count("parameters |") == 1  # rank 0 alone speaks

    shell(copy, walk[3], timeout=600)
    assert os.path.exists(copy / "out" / "triton" / "ckpt_0000002" / "DONE")

    r = shell(copy, walk[4])
    rows = [json.loads(l) for l in open(copy / "out" / "toy" / "evals.jsonl")]
    assert [row["step"] for row in rows] == [400, 600]
    # every task scored (acc, or pct_stereotype, exact_match_*), the code tasks left out, said
    assert all(any(k.startswith(task + "/") for k in row) and "loss/all" in row
               for row in rows for task in row["tasks"])
    assert "humaneval" not in rows[0]["tasks"] and "--confirm_run_unsafe_code" in r.stderr
    assert os.path.exists(copy / "out" / "toy" / "evals.md") and os.path.exists(copy / "out" / "toy" / "evals.png")

    r = shell(copy, walk[5])
    assert r.stdout.startswith("子曰：") and "out/toy/ckpt_0000600" in r.stderr

    r = shell(copy, walk[6])
    assert "out/hf_toy" in r.stdout and os.path.exists(copy / "out" / "hf_toy" / "model.safetensors")

    r = shell(copy, walk[7])
    assert os.path.getsize(copy / "out" / "toy" / "curves.png") > 10_000 and "curves.png" in r.stdout

    shell(copy, walk[8])
    manifest = json.load(open(copy / "data" / "demo" / "tokens_16k" / "manifest.json"))
    assert set(manifest["sources"]) == {"en", "zh", "code"}
    r = shell(copy, walk[9])
    assert "note: mixture phase" not in r.stdout and os.path.exists(copy / "out" / "demo_small" / "ckpt_0000006" / "DONE")

    r = shell(copy, walk[10])  # the demo run as a release (its steps done: the sweep, the package)
    assert "out/demo_small/ckpt_0000006 is at max_steps: nothing to train" in r.stdout
    rel = copy / "out" / "demo_release"
    assert sorted(os.listdir(rel / "checkpoints")) == ["ckpt_0000003", "ckpt_0000006"]
    assert os.path.exists(rel / "run" / "evals.md") and sorted(os.listdir(rel / "curation")) == ["clean.json", "dedup.json"]
    r = shell(copy, walk[11])  # and a stranger's check of it
    assert r.stdout.rstrip().endswith("out/demo_release: every check passed") and "FAIL" not in r.stdout

    # every file the walk wrote is one git ignores: the working tree stays clean
    status = subprocess.run(["git", "status", "--porcelain"], cwd=copy, capture_output=True, text=True).stdout
    assert status == "", status
