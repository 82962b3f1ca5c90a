"""
The [guard] scenarios, one line each, against any checkout of nano360 (the issue's note runs it on
the commit before and after): a command pointed at the user's files, a symbolic link, a swapped
tokenizer, a renamed checkpoint, a full disk, a torn line, files from a newer nano360, broken
tokenizer and model files.

    python benchmarks/guard_scenarios.py [CHECKOUT]      # default: this one

Each line: the scenario, what the command did ("error: ..." a one-line error; "TRACEBACK" a crash;
"exit 0" it went on), whether every file of the user's is byte-identical afterwards, and the last
line it said. Every command runs in a subprocess with the checkout's code, in a temporary folder.
"""
import base64, hashlib, json, os, shutil, subprocess, sys, tempfile

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
TINY = os.path.join(ROOT, "data", "tiny")
SMALL = ["--tokenizer_vocab=512", "--n_layer=1", "--d_model=32", "--n_head=2", "--ffn_hidden=64", "--seq_len=32",
         "--max_seq_len=64", "--batch_size=4", "--warmup_steps=1", "--eval_seqs=2", "--sample_tokens=0",
         "--log_interval=1"]


def run(*cmd, cwd, env=None, find=None):
    """What the command said: its one-line error, its traceback's last line, or (exit 0) its last
    line, or the first line holding find."""
    r = subprocess.run([sys.executable, *cmd], cwd=cwd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, **(env or {})})
    said = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    if "Traceback" in r.stderr:
        return "TRACEBACK " + (said[-1] if said else "")
    errors = [l for l in said if l.startswith("error:")]
    found = [l for l in said if find and find in l]
    return errors[-1] if errors else f"exit {r.returncode}: " + (found or said or [""])[-1]


def tree(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[p] = os.readlink(p) if os.path.islink(p) else hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def train(tmp, tokens, out, *more, find=None):
    return run(os.path.join(ROOT, "train.py"), os.path.join(ROOT, "config", "toy.py"), f"--docs_dir={TINY}",
               f"--tokens_dir={tokens}", f"--out_dir={out}", *SMALL, *more, cwd=tmp, find=find)


def corpus(folder):
    os.makedirs(folder, exist_ok=True)
    for name in ("en", "zh", "code"):
        shutil.copy(os.path.join(TINY, f"{name}.jsonl"), folder)


def scenario(name, setup, command, base):
    """setup(d) makes the user's files in d (returns what is theirs); command(d) is run; report."""
    d = tempfile.mkdtemp(dir=base)
    theirs = setup(d)
    before = {p: h for p, h in tree(d).items() if p.startswith(tuple(theirs))}
    said = command(d)
    after = {p: h for p, h in tree(d).items() if p in before}
    intact = "intact " if after == before else "CHANGED"
    print(f"RESULT {name:44s} | {intact} | {said[:170]}", flush=True)


def main():
    base = tempfile.mkdtemp()
    tokens, run0 = os.path.join(base, "tokens"), os.path.join(base, "run0")
    print("setting up: a tiny run", train(base, tokens, run0, "--max_steps=4", "--ckpt_interval=2", "--keep_last=5"))

    def with_run(d):
        shutil.copytree(tokens, os.path.join(d, "tokens"))
        shutil.copytree(run0, os.path.join(d, "run"))
        return [os.path.join(d, "run")]

    def curate(args):
        return lambda d: run(os.path.join(ROOT, "curate.py"), *args(d), cwd=d)

    S = lambda d: os.path.join(d, "src")  # noqa: E731
    scenario("clean: clean_dir = source_dir", lambda d: corpus(S(d)) or [S(d)],
             curate(lambda d: ("clean", f"--source_dir={S(d)}", f"--clean_dir={S(d)}")), base)
    scenario("clean: clean_dir inside source_dir", lambda d: corpus(S(d)) or [S(d)],
             curate(lambda d: ("clean", f"--source_dir={S(d)}", f"--clean_dir={S(d)}/clean")), base)

    def mine(d):
        corpus(os.path.join(d, "mine", "raw"))
        open(os.path.join(d, "mine", "notes.txt"), "w").write("my notes\n")
        return [os.path.join(d, "mine")]
    scenario("tokenize: tokens_dir above docs_dir", mine, lambda d: run(
        os.path.join(ROOT, "data.py"), "tokenize", f"--docs_dir={d}/mine/raw", f"--tokens_dir={d}/mine",
        "--tokenizer_vocab=512", cwd=d), base)
    scenario("train: tokens_dir = a previous run's out_dir", with_run,
             lambda d: train(d, f"{d}/run", f"{d}/run2", "--max_steps=1"), base)

    def notes_dir(d):
        os.makedirs(f"{d}/notes")
        open(f"{d}/notes/thesis.txt", "w").write("three years\n")
        return [f"{d}/notes"]
    scenario("train: out_dir = a folder of the user's", notes_dir,
             lambda d: train(d, tokens, f"{d}/notes", "--max_steps=1"), base)

    def lock_link(d):
        theirs = with_run(d)
        open(f"{d}/precious.txt", "w").write("not yours\n")
        os.remove(f"{d}/run/LOCK")
        os.symlink(f"{d}/precious.txt", f"{d}/run/LOCK")
        return theirs + [f"{d}/precious.txt"]
    scenario("train: out_dir/LOCK a link to a file outside", lock_link,
             lambda d: train(d, f"{d}/tokens", f"{d}/run", "--max_steps=6"), base)

    def swapped(d, own_run=False):
        theirs = with_run(d)
        if own_run:  # a run that read d/tokens (the copied one's meta names the original)
            shutil.rmtree(f"{d}/run")
            train(d, f"{d}/tokens", f"{d}/run", "--max_steps=2")
        path = f"{d}/tokens/tokenizer.tiktoken"
        lines = open(path).read().splitlines()
        a, b = [k for k, l in enumerate(lines) if len(base64.b64decode(l.split()[0])) == 2][:2]
        ta, tb = lines[a].split()[0], lines[b].split()[0]
        lines[a], lines[b] = f"{tb} {a}", f"{ta} {b}"  # two tokens' bytes swapped: same size, same ranks
        open(path, "w").write("\n".join(lines) + "\n")
        return theirs
    scenario("train: resume with two tokens swapped", swapped,
             lambda d: train(d, f"{d}/tokens", f"{d}/run", "--max_steps=6"), base)
    scenario("eval: sweep with two tokens swapped", lambda d: swapped(d, own_run=True),
             lambda d: run(os.path.join(ROOT, "eval.py"), f"{d}/run/ckpt_0000002", "--seqs=2", cwd=d), base)

    def renamed(d):
        with_run(d)
        os.rename(f"{d}/run/ckpt_0000002", f"{d}/run/ckpt_0000009")
        return []  # set aside whole (superseded/) is the handling: the line says whether it is named
    scenario("train: a checkpoint renamed newest", renamed,
             lambda d: train(d, f"{d}/tokens", f"{d}/run", "--max_steps=6", "--keep_last=5", find="resuming"),
             base)

    def newer(d):
        theirs = with_run(d)
        ckpt = f"{d}/run/ckpt_0000004"
        meta = json.load(open(f"{ckpt}/meta.json"))
        meta["config"]["train"]["muon_momentum"] = 0.95
        json.dump(meta, open(f"{ckpt}/meta.json", "w"), indent=1)
        open(f"{ckpt}/DONE", "w").write(json.dumps({"meta.json": hashlib.sha256(
            open(f"{ckpt}/meta.json", "rb").read()).hexdigest()}))
        return theirs
    scenario("train: a checkpoint of a newer nano360", newer,
             lambda d: train(d, f"{d}/tokens", f"{d}/run", "--max_steps=6"), base)

    def links(d):
        corpus(S(d))
        os.makedirs(f"{d}/elsewhere/more")
        shutil.copy(os.path.join(TINY, "en.jsonl"), f"{d}/elsewhere/more/extra.jsonl")
        shutil.copy(os.path.join(TINY, "zh.jsonl"), f"{d}/elsewhere/outside.jsonl")
        os.symlink(f"{d}/elsewhere/more", f"{S(d)}/more")
        os.symlink(f"{d}/elsewhere/outside.jsonl", f"{S(d)}/outside.jsonl")
        return [S(d), f"{d}/elsewhere"]

    def links_said(d):
        said = run(os.path.join(ROOT, "curate.py"), "clean", f"--source_dir={S(d)}", f"--clean_dir={d}/clean",
                   cwd=d)
        log = f"{d}/clean/problems.log"
        named = open(log).read() if os.path.exists(log) else ""
        return f"problems.log names: more {'more' in named}, outside.jsonl {'outside.jsonl' in named} | {said}"
    scenario("clean: symlinks in the input (folder, outside file)", links, links_said, base)

    def full_disk(d):
        corpus(S(d))
        return [S(d)]
    scenario("clean: a full disk (ulimit -f)", full_disk, lambda d: run(
        "-c", "import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000)); "
        f"sys.argv = ['curate.py', 'clean', '--source_dir={S(d)}', '--clean_dir={d}/clean', '--workers=1']; "
        f"sys.path.insert(0, {ROOT!r}); runpy.run_path({os.path.join(ROOT, 'curate.py')!r}, run_name='__main__')",
        cwd=d), base)

    def torn(d):
        theirs = with_run(d)
        run(os.path.join(ROOT, "eval.py"), f"{d}/run", "--seqs=2", cwd=d)
        open(f"{d}/run/evals.jsonl", "a").write('{"ckpt": "ckpt_00')
        return theirs[:0]
    scenario("eval: a torn last line of evals.jsonl", torn,
             lambda d: run(os.path.join(ROOT, "eval.py"), f"{d}/run", "--seqs=2", cwd=d), base)

    def tasks_ab(d):
        theirs = with_run(d)
        for k in "ab":
            os.makedirs(f"{d}/tasks_{k}")
        src = os.path.join(ROOT, "data", "evals")
        name = sorted(f for f in os.listdir(src) if f.endswith(".jsonl"))[0]
        lines = open(os.path.join(src, name)).read().splitlines()
        open(f"{d}/tasks_a/{name}", "w").write("\n".join(lines[:1]) + "\n")
        open(f"{d}/tasks_b/{name}", "w").write("\n".join(lines[1:3]) + "\n")
        run(os.path.join(ROOT, "eval.py"), f"{d}/run/ckpt_0000004", f"--tasks={d}/tasks_a", "--shots=0",
            "--seqs=2", cwd=d)
        return theirs[:0]

    def tasks_b(d):
        said = run(os.path.join(ROOT, "eval.py"), f"{d}/run/ckpt_0000004", f"--tasks={d}/tasks_b", "--shots=0",
                   "--seqs=2", cwd=d)
        rows = [json.loads(l) for l in open(f"{d}/run/evals.jsonl") if l.strip()]
        return f"evals.jsonl rows: {len(rows)} (2: B was evaluated, 1: A's scores reported as B's) | {said}"
    scenario("eval: --tasks=B after --tasks=A, same names", tasks_ab, tasks_b, base)

    def bad_tok(kind):
        def setup(d):
            os.makedirs(f"{d}/tok")
            path = f"{d}/tok/t.tiktoken"
            lines = open(f"{tokens}/tokenizer.tiktoken").read().splitlines()
            if kind == "duplicate rank":
                lines[5] = lines[5].split()[0] + " 4"
            open(path, "w").write("\n".join(lines) + "\n")
            side = json.load(open(f"{tokens}/tokenizer.tiktoken.json"))
            if kind == "sidecar not JSON":
                open(path + ".json", "w").write("{pat_str: oops")
            else:
                if kind == "pattern not a regex":
                    side["pat_str"] = "(unclosed"
                json.dump(side, open(path + ".json", "w"))
            return [f"{d}/tok"]
        return setup
    for kind in ("duplicate rank", "sidecar not JSON", "pattern not a regex"):
        scenario(f"tokenize: a .tiktoken with a {kind}", bad_tok(kind), lambda d: run(
            os.path.join(ROOT, "data.py"), "tokenize", f"--docs_dir={TINY}", f"--tokens_dir={d}/tokens",
            f"--tokenizer={d}/tok/t.tiktoken", cwd=d), base)

    def no_shards(d):
        theirs = with_run(d)
        m = json.load(open(f"{d}/tokens/manifest.json"))
        del m["shards"]
        json.dump(m, open(f"{d}/tokens/manifest.json", "w"))
        return theirs
    scenario("train: manifest.json without shards", no_shards,
             lambda d: train(d, f"{d}/tokens", f"{d}/run", "--max_steps=6"), base)

    def bin_only(d):
        os.makedirs(f"{d}/hf")
        json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
                   "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                   "intermediate_size": 64, "vocab_size": 64, "max_position_embeddings": 64,
                   "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
                   "eos_token_id": 2}, open(f"{d}/hf/config.json", "w"))
        open(f"{d}/hf/pytorch_model.bin", "wb").write(b"PK\x03\x04 a pickle we will not open")
        return [f"{d}/hf"]
    scenario("eval.py import: only pytorch_model.bin", bin_only, lambda d: run(
        os.path.join(ROOT, "eval.py"), "import", f"{d}/hf", f"{d}/w.pt", cwd=d), base)

    def hf_badjson(d):
        bin_only(d)
        from tokenizers import Tokenizer, models  # a real tokenizer.json, beside a broken config
        Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "</s>": 2}, merges=[])).save(f"{d}/hf/tokenizer.json")
        open(f"{d}/hf/tokenizer_config.json", "w").write("{not json")
        return [f"{d}/hf"]
    scenario("train: tokenizer_config.json not JSON", hf_badjson,
             lambda d: train(d, f"{d}/tokens", f"{d}/run", "--max_steps=1", f"--tokenizer={d}/hf"), base)
    scenario("train: --init_from a folder", lambda d: [],
             lambda d: train(d, tokens, f"{d}/run", "--max_steps=1", f"--init_from={d}"), base)
    scenario("train: resume past max_steps", with_run,
             lambda d: train(d, f"{d}/tokens", f"{d}/run", "--max_steps=2"), base)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
