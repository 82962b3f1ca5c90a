"""GSM8K, HumanEval and MBPP as lm-evaluation-harness 0.4.13 scores them (gentasks.py): batched
generation against a forward with no cache, one token at a time, and against transformers'
generate on the exported model; stop sequences, sampling under a seed; GSM8K's two answer
extractions and MBPP's prompt worked by hand from lm-eval's yaml; pass@k against a brute-force
count over subsets; generated code run only behind --confirm_run_unsafe_code, contained."""
import itertools, json, math, os, random, shutil

import numpy as np
import pytest
import torch

import eval as ev
import gentasks
import sandbox
import tasks
import tokenizer
import train
from config import ConfigError, ModelConfig, run_command
from helpers import ROOT, small_args
from model import GPT
from stage import DataError

EVALS = os.path.join(ROOT, "data", "evals")


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def model64(enc):
    """A random model in float64: no argmax is a near tie of rounding."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=enc.n_vocab, n_layer=2, d_model=32, n_head=4, n_kv_head=2,
                      head_dim=8, ffn_hidden=64, max_seq_len=96)
    model = GPT(cfg)
    model.init_weights(seed=3)
    with torch.no_grad():  # larger weights than init's: texts that are not one token repeated
        for p in model.parameters():
            p.mul_(8 if p.dim() == 2 else 1)
    return model.double().eval()


PROMPTS = ["Alice was beginning to get very tired", "子曰：学而时习之", "def f(x):\n    return",
           "The", "It was the best of times, it was the worst of times, it was the age of"]


def reference(model, enc, prompt, max_new, until):
    """Greedy by hand: the whole sequence through the model for every new token (no cache, no
    padding), until end-of-text or max_new; the text without special tokens, cut before the
    first stop sequence, as lm-eval's postprocess cuts it."""
    ids, out = enc.bos_ids + enc.encode_ordinary(prompt), []
    with torch.no_grad():
        for _ in range(max_new):
            t = model(torch.tensor([ids + out]))[0, -1].argmax().item()
            if t == enc.eot_token:
                break
            out.append(t)
    text = enc.decode([t for t in out if t not in tokenizer.special_ids(enc) and t < enc.n_vocab])
    cuts = [text.index(s) for s in until if s in text]
    return text[:min(cuts)] if cuts else text


def test_batched_greedy_generation_is_the_uncached_one_at_a_time(model64, enc):
    want = [reference(model64, enc, p, 24, []) for p in PROMPTS]
    assert len(set(want)) == len(want) and all(want)
    for batch in (1, 2, 5):  # left padding, rows of different lengths
        assert gentasks.generate_until(model64, enc, PROMPTS, [], 24, batch_size=batch) == want
    # stop sequences: a piece of each text stops it there (the shortest row's stop as well)
    stops = [w[3:6] for w in want]
    cut = [reference(model64, enc, p, 24, stops) for p in PROMPTS]
    assert cut != want
    assert gentasks.generate_until(model64, enc, PROMPTS, stops, 24, batch_size=3) == cut


def test_a_prompt_longer_than_the_window_loses_its_start_as_lm_eval_cuts_it(model64, enc, capsys):
    long = " ".join(["word"] * 200)
    keep = model64.cfg.max_seq_len - 16
    ids = enc.encode_ordinary(long)[-keep:]
    assert len(enc.encode_ordinary(long)) > keep
    with torch.no_grad():
        out = model64.generate(torch.tensor([ids]), 16, temperature=0)[0, keep:].tolist()
    text = enc.decode([t for t in out if t not in tokenizer.special_ids(enc) and t < enc.n_vocab]).split(
        enc.decode([enc.eot_token]))[0] if enc.eot_token not in out else \
        enc.decode([t for t in out[:out.index(enc.eot_token)] if t not in tokenizer.special_ids(enc)])
    assert gentasks.generate_until(model64, enc, [long], [], 16, desc="long") == [text]
    assert "long: 1 of 1 prompts are longer than the 80 tokens" in capsys.readouterr().err


def test_sampling_is_a_function_of_each_rows_seed(model64, enc):
    def run(batch, seeds):
        return gentasks.generate_until(model64, enc, PROMPTS, [], 12, temperature=1.0,
                                       top_p=0.95, top_k=50, seeds=seeds, batch_size=batch)
    seeds = list(range(len(PROMPTS)))
    first = run(5, seeds)
    assert run(5, seeds) == first and run(2, seeds) == first  # not the rows beside it
    assert run(5, [s + 100 for s in seeds]) != first
    assert first != gentasks.generate_until(model64, enc, PROMPTS, [], 12)  # sampled, not greedy


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gentasks") / "run"
    train.main(small_args(tiny_data, str(out), "--max_steps=2", "--ckpt_interval=2"))
    return out


def test_generation_matches_transformers_generate_on_the_exported_model(run, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_dir = tmp_path / "hf"
    ev.main(["export", str(run), str(hf_dir)])
    ours, _, enc, _ = ev.load(str(hf_dir))  # eval.py's path for a released model
    ours = ours.double()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float64).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    prompts = PROMPTS[:4]
    x = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = theirs.generate(**x, max_new_tokens=20, do_sample=False,
                              pad_token_id=tok.pad_token_id, eos_token_id=enc.eot_token)
    # lm-eval's reading of generate's output: past the padded prompt, decoded without specials
    want = [tok.decode(row[x["input_ids"].shape[1]:], skip_special_tokens=True) for row in out]
    assert gentasks.generate_until(ours, enc, prompts, [], 20, batch_size=4) == want


# -----------------------------------------------------------------------------
# GSM8K

@pytest.mark.parametrize("text, strict, flexible", [
    # worked by hand from gsm8k.yaml's regexes: strict takes "#### N", flexible the last number
    ("12 + 9 = 21, less 15 is 6.\n#### 6", "6", "6"),
    ("The answer is $1,250.", "[invalid]", "$1,250."),
    ("It fell 11, to -7 degrees", "[invalid]", "-7"),
    ("#### -3.5 apples, or 4", "-3.5", "4"),
    ("no number here", "[invalid]", "[invalid]"),
])
def test_gsm8k_extractions_are_lm_evals_regex_filters(text, strict, flexible):
    assert gentasks.extract(gentasks.STRICT, text, 0) == strict
    assert gentasks.extract(gentasks.FLEXIBLE, text, -1) == flexible


def test_gsm8k_exact_match_ignores_what_its_yaml_ignores():
    # the reference answer: everything up to "#### " goes, then commas, "$" and a final "."
    assert gentasks.normalized("She has 2 * 1250 = 2500.\n#### 2,548") == "2548"
    assert gentasks.normalized("$1,250.") == "1250" == gentasks.normalized("#### 1,250")
    assert gentasks.normalized("ABC") == "abc"
    assert gentasks.normalized("72 ") != gentasks.normalized("72")  # no strip: lm-eval compares as is


def test_gsm8k_scores_by_hand(tmp_path, monkeypatch):
    path = write(tmp_path / "gsm8k.jsonl", [
        {"question": "q1", "answer": "work\n#### 1,250"}, {"question": "q2", "answer": "#### 7"},
        {"question": "q3", "answer": "#### -2"}])
    said = ["So $1,250.\n#### 1250", "maybe 8 or 7", "#### 2"]
    monkeypatch.setattr(gentasks, "generate_until", lambda *a, **k: said)
    model = GPT(ModelConfig(vocab_size=64, n_layer=1, d_model=8, n_head=1, ffn_hidden=16,
                            max_seq_len=512))
    r = gentasks.run_generative(model, None, path, 0)
    # strict: "1250" == "1250", "[invalid]", "2" != "-2"; flexible: "1250", "7", "2" != "-2"
    assert r["exact_match_strict"] == pytest.approx(1 / 3)
    assert r["exact_match_flexible"] == pytest.approx(2 / 3)
    assert r["exact_match_flexible_stderr"] == pytest.approx(np.std([1, 1, 0], ddof=1) / math.sqrt(3))
    assert "n_clean" not in r
    # q2 (line 2) found in the training documents (eval.py --contamination): q1 and q3 apart
    r = gentasks.run_generative(model, None, path, 0, dirty={2})
    assert (r["n_clean"], r["n_contaminated"]) == (2, 1)
    assert r["exact_match_strict_clean"] == r["exact_match_flexible_clean"] == pytest.approx(1 / 2)
    assert r["exact_match_strict"] == pytest.approx(1 / 3)  # all items, as before


def test_gsm8k_shots_are_drawn_from_its_train_file_as_lm_eval_draws_them():
    path = os.path.join(EVALS, "gsm8k.jsonl")
    train_rows = [json.loads(l) for l in open(os.path.join(EVALS, "gsm8k.train.jsonl"))]
    test_rows = [json.loads(l) for l in open(path)]
    _, prompts = gentasks.gen_prompts(path, 2)
    rnd = random.Random(1234)  # lm-eval's fewshot_seed; one draw per item, in item order
    for doc, prompt in zip(test_rows, prompts):
        shots = rnd.sample(train_rows, 2)
        assert prompt == "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n"
                                 for s in shots) + f"Question: {doc['question']}\nAnswer:"


# -----------------------------------------------------------------------------
# HumanEval and MBPP

def test_mbpp_prompt_is_lm_evals_with_its_fixed_shots():
    _, prompts = gentasks.gen_prompts(os.path.join(EVALS, "mbpp.jsonl"), 1)
    # mbpp.yaml's doc_to_text, target_delimiter "", the shot's code then "\n[DONE]", "\n\n"
    assert prompts[0] == (
        "You are an expert Python programmer, and here is your task: Write a function to find "
        "the similar elements from the given two tuple lists. Your code should pass these tests:"
        "\n\nassert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
        "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
        "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n[BEGIN]\n"
        "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & "
        "set(test_tup2))\r\n  return (res) \n[DONE]\n\n"
        "You are an expert Python programmer, and here is your task: Write a function to return "
        "the square of a number. Your code should pass these tests:\n\nassert square(3) == 9\n"
        "assert square(0) == 0\nassert square(-2) == 4\n[BEGIN]\n")
    with pytest.raises(ConfigError, match="mbpp has 3"):
        gentasks.gen_prompts(os.path.join(EVALS, "mbpp.jsonl"), 4)
    with pytest.raises(ConfigError, match="humaneval has no few-shot split"):
        gentasks.gen_prompts(os.path.join(EVALS, "humaneval.jsonl"), 1)


def tiny_model(window=512):
    return GPT(ModelConfig(vocab_size=64, n_layer=1, d_model=8, n_head=1, ffn_hidden=16,
                           max_seq_len=window))


def completions(monkeypatch, texts):
    seen = []

    def fake(model, enc, prompts, until, *a, **k):
        seen.append((prompts, until))
        return texts[:len(prompts)]
    monkeypatch.setattr(gentasks, "generate_until", fake)
    return seen


def test_humaneval_runs_prompt_completion_and_tests_in_the_sandbox(monkeypatch):
    path = os.path.join(EVALS, "humaneval.jsonl")
    docs = [json.loads(l) for l in open(path)]
    right = [d["canonical_solution"] for d in docs]
    seen = completions(monkeypatch, right)
    r = gentasks.run_generative(tiny_model(), None, path, unsafe=True)
    assert r["pass@1"] == 1.0 and r["n"] == len(docs)
    assert seen[0] == ([d["prompt"] for d in docs], gentasks.UNTIL["humaneval"])
    # a wrong body, one that kills its parent, one that never ends: each a failure, and we live on
    completions(monkeypatch, ["    return a - b\n", "    import os; os.kill(os.getppid(), 9)\n",
                              "    while True: pass\n"])
    monkeypatch.setattr(gentasks, "CODE_TIMEOUT", 1.0)
    assert gentasks.run_generative(tiny_model(), None, path, unsafe=True)["pass@1"] == 0.0


def test_pass_at_k_over_samples_is_the_count_over_subsets(monkeypatch):
    path = os.path.join(EVALS, "mbpp.jsonl")
    docs = [json.loads(l) for l in open(path)]
    n, rng = 12, random.Random(0)
    ok = [[rng.random() < p for _ in range(n)] for p in (0.2, 0.5, 0.0)]
    texts = [(d["code"] if good else "def nothing():\n  pass") for d, row in zip(docs, ok) for good in row]
    completions(monkeypatch, texts)
    r = gentasks.run_generative(tiny_model(), None, path, 0, unsafe=True, samples=n, temperature=0.5)
    for k in (1, 10):  # by brute force: the share of k-subsets of an item's samples with a pass
        per_item = [np.mean([any(row[i] for i in s) for s in itertools.combinations(range(n), k)])
                    for row in ok]
        assert r[f"pass@{k}"] == pytest.approx(np.mean(per_item)), k
    assert "pass@100" not in r
    with pytest.raises(ConfigError, match="temperature 0"):
        gentasks.run_generative(tiny_model(), None, path, 0, unsafe=True, samples=2)


def test_no_generated_code_runs_without_the_flag(run, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "evals"
    folder.mkdir()
    for f in ("gsm8k.jsonl", "gsm8k.train.jsonl", "humaneval.jsonl", "mbpp.jsonl"):
        shutil.copy(os.path.join(EVALS, f), folder / f)

    def never(*a, **k):
        raise AssertionError("generated code ran without --confirm_run_unsafe_code")
    monkeypatch.setattr(sandbox, "run_program", never)
    with pytest.raises(ConfigError, match="--confirm_run_unsafe_code"):
        gentasks.run_generative(tiny_model(), None, str(folder / "humaneval.jsonl"))
    row = ev.sweep(str(run / "ckpt_0000002"), str(folder), seqs=2)[0]
    assert "humaneval.jsonl, mbpp.jsonl left out: they run the code" in capsys.readouterr().err
    assert set(row["tasks"]) == {"gsm8k"} and "gsm8k/exact_match_strict" in row
    assert row["generation"] == {"gsm8k": dict(samples=1, temperature=0.0, max_gen_toks=None)}
    # with the flag: scored, the programs run in the sandbox
    monkeypatch.undo()
    ev.main([str(run / "ckpt_0000002"), f"--tasks={folder}", "--seqs=2",
             "--confirm_run_unsafe_code", "--max_gen_toks=16"])
    row = ev.read_evals(str(run / "evals.jsonl"))[-1]
    assert set(row["tasks"]) == {"gsm8k", "humaneval", "mbpp"}
    assert row["tasks"]["mbpp"] == 3 and row["generation"]["humaneval"]["max_gen_toks"] == 16
    assert 0 <= row["humaneval/pass@1"] <= 1 and 0 <= row["mbpp/pass@1"] <= 1


@pytest.mark.parametrize("task, doc, said", [
    ("gsm8k", {"question": "q"}, "gsm8k.jsonl:1: missing field 'answer'"),
    ("gsm8k", {"question": None, "answer": "#### 1"}, "question is null, not text"),
    ("humaneval", {"prompt": "def f():\n", "test": "def check(c): pass", "entry_point": 3},
     "entry_point is 3, not text"),
    ("mbpp", {"text": "t", "code": "c", "test_list": ["assert 1", "assert 2"]},
     "test_list is [\"assert 1\", \"assert 2\"], not a list of 3 or more tests"),
])
def test_a_bad_item_is_one_line_naming_file_line_and_field(task, doc, said, tmp_path):
    path = write(tmp_path / f"{task}.jsonl", [doc])
    with pytest.raises(DataError, match=None) as e:
        gentasks.gen_prompts(path, 0)
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_window_too_small_for_lm_evals_budget_is_said(monkeypatch, capsys):
    seen = completions(monkeypatch, ["#### 1"] * 4)
    monkeypatch.setattr(tasks, "_said", set())
    gentasks.run_generative(tiny_model(window=256), None, os.path.join(EVALS, "gsm8k.jsonl"), 0)
    assert "gsm8k.jsonl: lm-eval generates up to 256 tokens, and the model's window is 256: " \
           "128 here" in capsys.readouterr().err
    assert seen  # and it generated, with the budget said


def test_a_suite_with_code_tasks_prints_the_published_figures(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tasks, "_said", set())
    folder = tmp_path / "evals"
    shutil.copytree(EVALS, folder)
    rows = ev.sweep(str(run / "ckpt_0000002"), f"crystalcoder:{folder}", seqs=2, unsafe=True,
                    max_gen_toks=8)
    out = capsys.readouterr().out
    assert rows[-1]["generation"]["humaneval"] == dict(samples=20, temperature=0.2,
                                                       max_gen_toks=8)
    assert "humaneval" in out and "28.38" in out and "36.38" in out
    line = next(l for l in out.splitlines() if l.startswith("hellaswag"))
    assert line.split()[4] == "-"  # task, shots, metric, ours, published: a chart, not a number


@pytest.mark.parametrize("flag, said", [
    ("--samples=0", "--samples=0: generations per item, 1 or more"),
    ("--temperature=-1", "--temperature=-1.0: 0 (greedy) or more"),
    ("--max_gen_toks=0", "--max_gen_toks=0: new tokens at most, 1 or more"),
    ("--samples=4", "--samples=4 at temperature 0: greedy decoding gives one text n times"),
])
def test_a_generation_setting_that_cannot_run_is_one_line_before_any_load(flag, said, run, tmp_path,
                                                                        capsys, monkeypatch):
    folder = tmp_path / "evals"
    folder.mkdir()
    shutil.copy(os.path.join(EVALS, "gsm8k.jsonl"), folder)
    monkeypatch.setattr(ev, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr("sys.argv", ["eval.py", str(run / "ckpt_0000002"), f"--tasks={folder}", flag])
    with pytest.raises(SystemExit) as e:
        run_command(ev.main, DataError, ValueError)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {said}") and err.count("\n") == 1, err
