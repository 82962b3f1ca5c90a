"""eval.py: bits per byte on a hand-checked case, every task format, memorization, the sweep,
sampling, export's message and file modes, where one Hugging Face folder's results go."""
import json, math, os, random, shutil, subprocess, sys

import numpy as np
import pytest
import torch

import data
import eval as ev
import stage
import suites
import tasks
import tokenizer
import parallel
import train
from config import ModelConfig
from helpers import ROOT, small_args
from model import sample_text


@pytest.fixture(scope="module")
def run3(tiny_data, tmp_path_factory):
    """A tiny run with three checkpoints (steps 2, 4, 6)."""
    out = tmp_path_factory.mktemp("eval") / "run"
    train.main(small_args(tiny_data, str(out), "--max_steps=6", "--ckpt_interval=2", "--keep_last=5",
                          "--seq_len=64", "--max_seq_len=64"))
    return out


def test_bits_per_byte_of_a_uniform_model(run3):
    # zero output weights: every token has probability 1/V, so the loss is ln V per token and the
    # bits per byte are (tokens x log2 V) / bytes, counted here the long way
    model, cfg, enc, _ = ev.load(str(run3 / "ckpt_0000006"))
    with torch.no_grad():
        model.lm_head.weight.zero_()
    got = ev.loss_and_bpb(model, cfg, enc, max_seqs=3)
    V = model.cfg.vocab_size
    manifest = data.load_manifest(cfg.tokens_dir, hash_shards=False)
    tokens = nbytes = 0
    for source, seqs in data.val_sequences(cfg.tokens_dir, manifest, cfg.seq_len, 3).items():
        # the text's UTF-8 bytes: the end-of-text marker is not text
        text_bytes = sum(len(enc.decode_bytes(row)) - row.count(enc.eot_token) * len(b"<|endoftext|>")
                         for row in seqs[:, 1:].tolist())
        assert got[f"loss/{source}"] == pytest.approx(math.log(V), rel=1e-5)
        assert got[f"bpb_window/{source}"] == pytest.approx(seqs[:, 1:].size * math.log2(V) / text_bytes, rel=1e-5)
        tokens, nbytes = tokens + seqs[:, 1:].size, nbytes + text_bytes
    assert got["bpb_window/all"] == pytest.approx(tokens * math.log2(V) / nbytes, rel=1e-5)


def test_document_bits_per_byte_is_lm_eval_s(run3):
    # whole documents, every token predicted once (the first after end-of-text), no end-of-text:
    # with a uniform model that is (tokens x log2 V) / bytes, whatever the windows
    model, cfg, enc, _ = ev.load(str(run3 / "ckpt_0000006"))
    manifest = data.load_manifest(cfg.tokens_dir, hash_shards=False)
    docs = ev.held_out_documents(cfg, manifest, 3)
    assert all(enc.eot_token not in d for ds in docs.values() for d in ds)
    assert max(len(d) for ds in docs.values() for d in ds) > model.cfg.max_seq_len  # several windows
    trained = ev.document_bpb(model, cfg, enc, 3)
    # one document shorter than the model's length: one forward of [eot] + doc, by hand
    doc = min((d for ds in docs.values() for d in ds), key=len)[:40]
    x = torch.tensor([[enc.eot_token] + doc])
    with torch.no_grad():
        logp = torch.log_softmax(model(x[:, :-1]).double(), -1)[0]
    assert -tasks.loglikelihoods(model, [([enc.eot_token], doc)])[0] == pytest.approx(
        -logp.gather(1, x[0, 1:, None]).sum().item(), rel=1e-6)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    got = ev.document_bpb(model, cfg, enc, 3)
    V = model.cfg.vocab_size
    for source, ds in docs.items():
        nbytes = sum(len(enc.decode_bytes(d)) for d in ds)
        assert got[f"bpb_doc/{source}"] == pytest.approx(sum(map(len, ds)) * math.log2(V) / nbytes, rel=1e-6)
    assert trained["bpb_doc/all"] < got["bpb_doc/all"]  # the trained model beats uniform


class Oracle(torch.nn.Module):
    """A 'model' that puts nearly all probability on continuing one of the gold answers."""

    def __init__(self, golds, vocab):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=vocab, max_seq_len=4096)
        self.next = {tuple(g[:i + 1]): g[i + 1] for g in golds for i in range(len(g) - 1)}
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, doc_ids=None, pos=None, at=None):
        # model.GPT's interface: doc_ids (B, T, T) booleans, the keys each token sees
        logits = torch.zeros(*x.shape, self.cfg.vocab_size)
        for b in range(x.size(0)):
            for t in range(x.size(1)):
                seen = x[b, :t + 1] if doc_ids is None else x[b][doc_ids[b, t]]
                nxt = self.next.get(tuple(seen.tolist()))
                if nxt is not None:
                    logits[b, t, nxt] = 30.0
        return logits if at is None else logits[at]


def task_copy(tmp_path, task, shots):
    """data/evals' task file in tmp_path, with its own items as the few-shot file when shots > 0."""
    path = tmp_path / f"{task}.jsonl"
    shutil.copy(os.path.join(ROOT, "data", "evals", task + ".jsonl"), path)
    if shots:
        shutil.copy(path, tasks.shots_file(str(path)))
    return str(path)


@pytest.mark.parametrize("task", [t for t in tasks.TASKS if t not in tasks.ACC_ONLY | tasks.PAIRS])  # the rest: test_tasks_more.py, test_tasks_race_crows.py
@pytest.mark.parametrize("shots", [0, 1])
def test_every_task_format_is_read_and_scored(task, shots, tiny_data, tmp_path):
    path = task_copy(tmp_path, task, shots)
    items = tasks.read_task(path)
    assert len(items) >= 2 and all(0 <= it.gold < len(it.choices) for it in items)
    enc = tokenizer.tokenizer_of(tiny_data, data.load_manifest(tiny_data, hash_shards=False))
    k = tasks.shots_of(path, shots)  # TruthfulQA: 0, as lm-eval pins it
    assert k == (0 if task in tasks.PINNED else shots)
    ctxs = tasks.contexts(path, items, k)
    golds = [sum(tasks.encode_pair(enc, c, " " + it.choices[it.gold]), []) for c, it in zip(ctxs, items)]
    right = tasks.run_task(Oracle(golds, enc.n_vocab), enc, path, shots, batch_size=3)
    assert right["acc"] == right["acc_norm"] == 1.0 and right["n"] == len(items) and right["shots"] == k
    assert right["acc_stderr"] == 0.0
    # no preference: each token costs ln V, so acc picks the answer of fewest tokens and acc_norm
    # the fewest tokens per character of answer (without the space before it)
    flat = tasks.run_task(Oracle([], enc.n_vocab), enc, path, shots)
    ntok = [[len(tasks.encode_pair(enc, c, " " + ch)[1]) for ch in it.choices] for c, it in zip(ctxs, items)]
    assert flat["acc"] == np.mean([int(np.argmin(ns)) == it.gold for ns, it in zip(ntok, items)])
    per_char = [[-n / len(ch) for n, ch in zip(ns, it.choices)] for ns, it in zip(ntok, items)]
    assert flat["acc_norm"] == np.mean([int(np.argmax(pc)) == it.gold for pc, it in zip(per_char, items)])


def test_prompts_are_lm_eval_s_by_hand(tmp_path):
    # written out from lm-evaluation-harness 0.4's task configs, one item of each format
    rows = {
        "hellaswag": {"activity_label": "Health", "ctx_a": "[header] How to stay calm [title] Breathe deeply.",
                      "ctx_b": "then count", "endings": ["to ten. [step] Slowly.", "the sheep."], "label": "0"},
        "arc_easy": {"question": "Which is a metal?", "choices": {"text": ["iron", "wood"], "label": ["A", "B"]},
                     "answerKey": "A"},
        "mmlu": {"question": " What is 2+2? ", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "high_school_math"},
        "ceval": {"question": "一加一等于几？", "A": "一", "B": "二", "C": "三", "D": "四", "answer": "B", "subject": "数学"},
        "cmmlu": {"Question": "水的化学式是？", "A": "H2O", "B": "CO2", "C": "O2", "D": "NaCl", "Answer": "A",
                  "subject": "化学"},
    }
    want = {
        "hellaswag": ("Health: How to stay calm. Breathe deeply. Then count", ["to ten. Slowly.", "the sheep."], 0),
        "arc_easy": ("Question: Which is a metal?\nAnswer:", ["iron", "wood"], 0),
        "mmlu": ("The following are multiple choice questions (with answers) about high school math.\n\n"
                 "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:", list("ABCD"), 1),
        "ceval": ("以下是中国关于数学的单项选择题，请选出其中的正确答案。\n\n一加一等于几？\nA. 一\nB. 二\nC. 三\nD. 四\n答案：",
                  list("ABCD"), 1),
        "cmmlu": ("以下是关于化学的单项选择题，请直接给出正确答案的选项。\n\n水的化学式是？\nA. H2O\nB. CO2\nC. O2\nD. NaCl\n答案：",
                  list("ABCD"), 0),
    }
    for task, row in rows.items():
        path = tmp_path / f"{task}.jsonl"
        path.write_text(json.dumps(row, ensure_ascii=False) + "\n")
        items = tasks.read_task(str(path))
        assert (tasks.contexts(str(path), items, 0)[0], items[0].choices, items[0].gold) == want[task], task
    # one shot of MMLU: the description once, then the solved item, a blank line, the question
    shutil.copy(tmp_path / "mmlu.jsonl", tmp_path / "mmlu.dev.jsonl")
    items = tasks.read_task(str(tmp_path / "mmlu.jsonl"))
    q = "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    assert tasks.contexts(str(tmp_path / "mmlu.jsonl"), items, 1)[0] == \
        f"The following are multiple choice questions (with answers) about high school math.\n\n{q} B\n\n{q}"


def test_shots_come_as_lm_eval_draws_them(tmp_path):
    # ARC and HellaSwag: a seeded random draw from the train file, one item after another;
    # MMLU, C-Eval, CMMLU: the first n dev items of the item's own subject
    def arc(i):
        return {"question": f"q{i}?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"}
    (tmp_path / "arc_easy.jsonl").write_text("".join(json.dumps(arc(i)) + "\n" for i in range(3)))
    (tmp_path / "arc_easy.train.jsonl").write_text("".join(json.dumps(arc(i)) + "\n" for i in range(10, 16)))
    path = str(tmp_path / "arc_easy.jsonl")
    rnd = random.Random(1234)
    want = ["".join(f"Question: q{10 + j}?\nAnswer: y\n\n" for j in rnd.sample(range(6), 2)) + f"Question: q{i}?\nAnswer:"
            for i in range(3)]
    assert tasks.contexts(path, tasks.read_task(path), 2) == want
    # HellaSwag: lm-eval 0.4.13 draws one more each time (its fewshot and test splits are both unset)
    hs = lambda i: {"activity_label": "A", "ctx_a": f"c{i}", "ctx_b": "", "endings": ["x", "y"], "label": "1"}
    (tmp_path / "hellaswag.jsonl").write_text("".join(json.dumps(hs(i)) + "\n" for i in range(3)))
    (tmp_path / "hellaswag.train.jsonl").write_text("".join(json.dumps(hs(i)) + "\n" for i in range(10, 16)))
    rnd = random.Random(1234)
    want = ["".join(f"A: c{10 + j} y\n\n" for j in rnd.sample(range(6), 3)[:2]) + f"A: c{i}" for i in range(3)]
    path = str(tmp_path / "hellaswag.jsonl")
    assert tasks.contexts(path, tasks.read_task(path), 2) == want
    mm = lambda q, s: {"question": q, "choices": list("abcd"), "answer": 0, "subject": s}
    (tmp_path / "mmlu.jsonl").write_text(json.dumps(mm("Q", "law")) + "\n")
    (tmp_path / "mmlu.dev.jsonl").write_text("".join(json.dumps(mm(f"d{i}", s)) + "\n"
                                                     for i, s in enumerate(["art", "law", "art", "law", "law"])))
    ctx = tasks.contexts(str(tmp_path / "mmlu.jsonl"), tasks.read_task(str(tmp_path / "mmlu.jsonl")), 2)[0]
    assert "d1\n" in ctx and "d3\n" in ctx and "d4" not in ctx and "d0" not in ctx
    with pytest.raises(stage.DataError, match="mmlu.dev.jsonl: 5 items, fewer than the 6 shots asked"):
        tasks.contexts(str(tmp_path / "mmlu.jsonl"), tasks.read_task(str(tmp_path / "mmlu.jsonl")), 6)


def test_the_boundary_rule_acc_norm_and_standard_errors(tiny_data, tmp_path, monkeypatch):
    enc = tokenizer.tokenizer_of(tiny_data, data.load_manifest(tiny_data, hash_shards=False))
    # trailing whitespace of the context goes to the continuation, which is what the whole adds
    ctx, cont = tasks.encode_pair(enc, "Answer: ", "A")
    assert ctx == enc.encode_ordinary("Answer:") and ctx + cont == enc.encode_ordinary("Answer: A")
    assert tasks.encode_pair(enc, "", "hi") == ([enc.eot_token], enc.encode_ordinary("hi"))
    # acc_norm divides by the answer's length without the space: -3/1 < -9/4, so the second wins
    # (with the space, -3/2 > -9/5 would pick the first)
    row = {"question": "q?", "choices": {"text": ["a", "abcd"], "label": ["A", "B"]}, "answerKey": "B"}
    (tmp_path / "arc_easy.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setattr(tasks, "loglikelihoods", lambda model, reqs, *a, **k: [-3.0, -9.0])
    r = tasks.run_task(None, enc, str(tmp_path / "arc_easy.jsonl"), 0)
    assert (r["acc"], r["acc_norm"]) == (0.0, 1.0)
    # the sample standard deviation over sqrt(n): hits 1, 0, 1, 1 -> 0.5 / 2
    assert tasks.stderr([1.0, 0.0, 1.0, 1.0]) == pytest.approx(0.25)


def test_batched_scoring_equals_one_forward_per_request(tiny_data):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layer=2, d_model=32, n_head=2, ffn_hidden=64, max_seq_len=16)
    model = parallel.build_model(cfg, "cpu", 0).eval()
    g = torch.Generator().manual_seed(1)
    rnd = lambda n: torch.randint(1, 64, (n,), generator=g).tolist()
    ctx = rnd(7)
    requests = [(ctx, [5]), (ctx, [9]), (ctx, [5, 6]), (rnd(3), rnd(4)), (rnd(30), rnd(2)), ([1], rnd(1))]
    got = tasks.loglikelihoods(model, requests, batch_size=2)
    for (c, k), value in zip(requests, got):
        ids = torch.tensor([(c + k)[-17:]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids[:, :-1]).double(), -1)[0, -len(k):]
        assert value == pytest.approx(logp.gather(1, ids[0, -len(k):, None]).sum().item(), abs=1e-5)


def test_a_task_file_in_the_wrong_format_names_file_line_and_field(tmp_path):
    bad = tmp_path / "mmlu_bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}) + "\n"
                   + json.dumps({"question": "q", "options": ["a", "b"], "answer": 1}) + "\n")
    with pytest.raises(stage.DataError, match=rf"{bad}:2: missing field 'choices' \(this file is read as mmlu"):
        tasks.read_task(str(bad))
    with pytest.raises(stage.DataError, match="unknown task"):
        tasks.read_task(str(tmp_path / "trivia.jsonl"))


def test_memorization_of_an_overfit_sequence_and_of_random_text():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layer=2, d_model=64, n_head=4, ffn_hidden=128, max_seq_len=64)
    model = parallel.build_model(cfg, "cpu", 0)
    seq = torch.randint(0, 64, (1, 64), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):  # learn one sequence by heart
        loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    exact, frac = ev.memorized(model, seq, 32, 32)
    assert exact == 1.0 and frac == 1.0
    noise = torch.randint(0, 64, (16, 64), generator=torch.Generator().manual_seed(2))
    exact, frac = ev.memorized(model, noise, 32, 32)
    assert exact == 0.0 and frac < 0.1


def test_sweep_over_three_checkpoints_and_again(run3, tmp_path, capsys):
    rows = ev.sweep(str(run3), os.path.join(ROOT, "data", "evals"), shots=0, seqs=4)
    assert [r["step"] for r in rows] == [2, 4, 6]
    for r in rows:
        assert {"loss/all", "bpb_window/all", "bpb_doc/all", "mmlu/acc", "mmlu/acc_stderr", "cmmlu/acc_norm", "mem/exact",
                "mem_heldout/frac"} <= set(r)
        # every task but the code ones, which run only with --confirm_run_unsafe_code
        assert r["tasks"] == {t: 0 for t in tasks.TASKS + ("gsm8k",)}
    assert len(open(run3 / "evals.csv").readlines()) == 4 and len(open(run3 / "evals.md").readlines()) == 7
    assert len(open(run3 / "evals.jsonl").readlines()) == 3
    ev.sweep(str(run3), os.path.join(ROOT, "data", "evals"), shots=0, seqs=4)  # evaluated already: skipped
    assert len(open(run3 / "evals.jsonl").readlines()) == 3
    # another setting is evaluated again, and its rows say which
    task_copy(tmp_path, "mmlu", 1)
    assert ev.settings(suites.task_files(str(tmp_path)), None) == {"mmlu": 5}  # the published count, where the dev file is
    # no shot files but GSM8K's; HumanEval's none, MBPP's built in
    assert ev.settings(suites.task_files(os.path.join(ROOT, "data", "evals")), None) == dict(
        {t: 0 for t in tasks.TASKS}, gsm8k=5, humaneval=0, mbpp=3)
    rows = ev.sweep(str(run3), str(tmp_path), shots=1, seqs=4)
    assert [r["tasks"] for r in rows] == [{"mmlu": 1}] * 3 and "mmlu/acc" in rows[0] and "arc_easy/acc" not in rows[0]
    assert len(open(run3 / "evals.jsonl").readlines()) == 6
    capsys.readouterr()
    rows = ev.sweep(str(run3), "", seqs=4)  # no tasks: loss, bits per byte, memorization, and where tasks go
    assert "no --tasks" in capsys.readouterr().err and not any("/acc" in k for k in rows[0])
    assert len(open(run3 / "evals.jsonl").readlines()) == 9
    # another --seqs is another setting too: its rows say it, and the rows of 4 stay 4's
    rows = ev.sweep(str(run3), "", seqs=2)
    assert [r["seqs"] for r in rows] == [2] * 3 and len(open(run3 / "evals.jsonl").readlines()) == 12
    assert [r["seqs"] for r in ev.sweep(str(run3), "", seqs=4)] == [4] * 3
    assert len(open(run3 / "evals.jsonl").readlines()) == 12


def test_sampling_streams_what_generate_gives(run3):
    model, cfg, enc, _ = ev.load(str(run3 / "ckpt_0000006"))
    prompt = "子曰："
    greedy = "".join(sample_text(model, enc, prompt, 12, temperature=0))
    idx = torch.tensor([enc.encode_ordinary(prompt)])
    out = model.generate(idx, 12, temperature=0)[0, idx.size(1):].tolist()
    if enc.eot_token in out:
        out = out[:out.index(enc.eot_token)]
    assert greedy == enc.decode(out)
    seeded = lambda seed: torch.Generator().manual_seed(seed)
    # a tiny nucleus keeps only the most likely token: greedy again, whatever the temperature
    assert "".join(sample_text(model, enc, prompt, 12, temperature=1.5, top_k=0, top_p=1e-6, generator=seeded(3))) == greedy
    a = "".join(sample_text(model, enc, prompt, 12, temperature=1.0, generator=seeded(5)))
    assert a == "".join(sample_text(model, enc, prompt, 12, temperature=1.0, generator=seeded(5)))  # seeded


def test_export_import_commands_and_init_from(run3, tiny_data, tmp_path):
    transformers = pytest.importorskip("transformers")
    ckpt = str(run3 / "ckpt_0000006")
    assert ev.main(["export", ckpt, str(tmp_path / "hf")]) == 0
    # run from the project root, where our folders come first on sys.path, transformers loads it
    # (a folder of ours named `kernels` hid the distribution transformers 5.25 imports)
    code = ("import sys, transformers; m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]); "
            "print(type(m).__name__)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hf")], cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.strip() == "LlamaForCausalLM", r.stderr[-2000:]
    with pytest.raises(SystemExit):  # each command takes its own options: export has no --top_p
        ev.main(["export", ckpt, str(tmp_path / "hf2"), "--top_p=0.1"])
    assert not os.path.exists(tmp_path / "hf2")
    model, cfg, enc, _ = ev.load(ckpt)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = "子曰：学而时习之 def f(x): return x"
    ids = enc.encode_ordinary(text)
    assert tok.encode(text, add_special_tokens=False) == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert ((ours - theirs).abs().max() / ours.abs().max()).item() < 1e-4
    # back in: the imported weights start a new run that begins where the checkpoint stood
    assert ev.main(["import", str(tmp_path / "hf"), str(tmp_path / "llama.pt")]) == 0
    out = tmp_path / "continued"
    train.main(small_args(tiny_data, str(out), "--max_steps=1", "--warmup_steps=1", "--seq_len=64", "--max_seq_len=64",
                          f"--init_from={tmp_path / 'llama.pt'}"))
    first = json.loads(open(out / "metrics.jsonl").readline())["val"]["all"]
    original = [json.loads(l) for l in open(run3 / "metrics.jsonl") if '"val"' in l][-1]["val"]["all"]
    assert first == pytest.approx(original, rel=1e-5)


def test_export_says_what_it_wrote_and_writes_normal_file_modes(run3, tmp_path, capsys):
    # safetensors 0.8 writes model.safetensors 0600 whatever the umask; every file gets what
    # open() gives, 0o666 less the umask, under two umasks (so neither 0600 nor a fixed 0644 passes)
    pytest.importorskip("safetensors")
    ckpt = str(run3 / "ckpt_0000006")
    n = ev.load(ckpt)[0].num_params()
    for umask in (0o022, 0o027):
        out = str(tmp_path / f"hf_{umask:o}")
        old = os.umask(umask)
        try:
            assert ev.main(["export", str(run3), out]) == 0
        finally:
            os.umask(old)
        assert capsys.readouterr().out == (
            f"wrote {out}: Llama, {n:,} parameters, tokenizer.json (from {ckpt}); "
            f'load it with transformers.AutoModelForCausalLM.from_pretrained("{out}")\n')
        files = sorted(os.listdir(out))
        assert "model.safetensors" in files and "tokenizer.json" in files
        assert {f: oct(os.stat(os.path.join(out, f)).st_mode & 0o777) for f in files} == \
            {f: oct(0o666 & ~umask) for f in files}


def test_sample_names_the_checkpoint_on_stderr(run3, capsys):
    assert ev.main(["sample", str(run3), "--tokens=4", "--prompt=子曰："]) == 0
    out, err = capsys.readouterr()
    assert err == f"sampling {run3 / 'ckpt_0000006'} (step 6)\n"
    assert out.startswith("子曰：") and "sampling" not in out  # stdout is the text alone


def test_one_hugging_face_folder_s_results_go_beside_it(run3, tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    pytest.importorskip("tokenizers")
    hf = tmp_path / "models" / "foo"
    ev.main(["export", str(run3 / "ckpt_0000006"), str(hf)])
    before = sorted(os.listdir(hf))
    evals = os.path.join(ROOT, "data", "evals")
    rows = ev.sweep(str(hf) + "/", evals, shots=0)  # a trailing slash names the same folder
    assert [(r["ckpt"], r["step"]) for r in rows] == [("foo", None)]
    beside = tmp_path / "models" / "foo.evals"
    assert sorted(os.listdir(beside)) == ["evals.csv", "evals.jsonl", "evals.md", "evals.png"]
    assert sorted(os.listdir(tmp_path / "models")) == ["foo", "foo.evals"]  # nothing in the parent
    assert sorted(os.listdir(hf)) == before  # nor in the model's folder
    assert [json.loads(l)["ckpt"] for l in open(beside / "evals.jsonl")] == ["foo"]
    ev.sweep(str(hf), evals, shots=0)  # evaluated already: found there, not evaluated again
    assert len(open(beside / "evals.jsonl").readlines()) == 1
    monkeypatch.chdir(hf)  # from inside the folder: "." has no name, its real one is used
    ev.sweep(".", evals, shots=0)
    assert len(open(beside / "evals.jsonl").readlines()) == 1 and sorted(os.listdir(hf)) == before


def test_init_from_weights_of_another_shape_is_a_config_error(tiny_data, tmp_path):
    torch.save({"model": {"embed.weight": torch.zeros(3, 3)}}, tmp_path / "w.pt")
    with pytest.raises(train.ConfigError, match=r"--init_from=.*w.pt does not fit this model config: .*embed.weight"):
        train.main(small_args(tiny_data, str(tmp_path / "out"), "--max_steps=1", "--warmup_steps=1", f"--init_from={tmp_path / 'w.pt'}"))


def test_eval_loss_is_the_runs_own_validation_loss_with_document_masking(tiny_data, tmp_path):
    # eval.py and training compute the loss one way (model.validation_loss): with doc_mask the packed
    # documents of a validation window do not see each other, in both
    out = tmp_path / "run"
    train.main(small_args(tiny_data, str(out), "--max_steps=2", "--eval_interval=2", "--doc_mask=true",
                          "--eval_seqs=0"))
    val = [json.loads(l) for l in open(out / "metrics.jsonl") if '"val"' in l][-1]["val"]
    row = ev.sweep(str(out / "ckpt_0000002"), tasks_dir="")[0]
    assert {k: row[f"loss/{k}"] for k in val} == val  # the very same floats
    # and the mask matters on these windows: without it the loss is another one
    model, cfg, enc, _ = ev.load(str(out / "ckpt_0000002"))
    cfg.doc_mask = False
    assert abs(ev.loss_and_bpb(model, cfg, enc)["loss/all"] - val["all"]) > 1e-6  # fp32 noise is ~1e-7


def test_a_sweep_under_torchrun_splits_the_checkpoints(run3, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run3, run, ignore=shutil.ignore_patterns("evals.*"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "eval.py", str(run),
           "--seqs=4"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in open(run / "evals.jsonl")]
    assert sorted(r["ckpt"] for r in rows) == ["ckpt_0000002", "ckpt_0000004", "ckpt_0000006"]  # each once
    assert len(open(run / "evals.md").readlines()) == 5  # rank 0's table of all three
    one = ev.evaluate_checkpoint(str(run / "ckpt_0000004"), "", None, 4, "cpu")
    two = next(r for r in rows if r["ckpt"] == "ckpt_0000004")
    assert two["loss/all"] == pytest.approx(one["loss/all"], rel=1e-6)
    assert two["bpb_doc/all"] == pytest.approx(one["bpb_doc/all"], rel=1e-6)
