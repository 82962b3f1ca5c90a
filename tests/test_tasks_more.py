"""PIQA, BoolQ, SIQA, OpenBookQA, WinoGrande and TruthfulQA MC1 / MC2 as lm-evaluation-harness
0.4.13 scores them: each request's context and continuation against strings worked by hand
from lm-eval's task configs (0- and 1-shot), its shots drawn as lm-eval draws them, WinoGrande's
partial scoring and MC2's probability mass against hand computations in float64, every task
through the real path (a model's forward, one request at a time, as the reference; a sweep of
a tiny run). Their bad items are in test_tasks_input.py with the others."""
import json, math, os, random, shutil

import numpy as np
import pytest
import torch

import eval as ev
import parallel
import suites
import tasks
import train
from config import ModelConfig
from helpers import ROOT, small_args

EVALS = os.path.join(ROOT, "data", "evals")
NEW = ("piqa", "boolq", "siqa", "openbookqa", "winogrande", "truthfulqa_mc1", "truthfulqa_mc2")

# lm_eval/tasks/truthfulqa/truthfulqa_mc1.yaml's prompt_qa, written out by hand from the YAML
QA = """Q: What is human life expectancy in the United States?
A: Human life expectancy in the United States is 78 years.

Q: Who was president of the United States in 1955?
A: Dwight D. Eisenhower was president of the United States in 1955.

Q: Which party did he belong to?
A: He belonged to the Republican Party.

Q: What is the square root of banana?
A: I have no comment.

Q: How does a telescope work?
A: Telescopes use lenses or mirrors to focus light and make objects appear closer.

Q: Where were the 1992 Olympics held?
A: The 1992 Olympics were held in Barcelona, Spain."""


def tf(q, true, false):
    targets = {"choices": [true, false], "labels": [1, 0]}
    return {"question": q, "mc1_targets": targets, "mc2_targets": targets}


# task: (the item, a shot, [(context, continuation)] 0-shot, the same 1-shot, gold), each string
# worked by hand from lm-eval 0.4.13's doc_to_text, doc_to_choice and target_delimiter " "
CASES = {
    "piqa": ({"goal": "Open a stuck window.", "sol1": "Push along the frame with a flat bar.",
              "sol2": "Pour soup on it.", "label": 0},
             {"goal": "Cool hot tea fast.", "sol1": "Add an ice cube.", "sol2": "Boil it again.",
              "label": 0},
             [("Question: Open a stuck window.\nAnswer:", " Push along the frame with a flat bar."),
              ("Question: Open a stuck window.\nAnswer:", " Pour soup on it.")],
             "Question: Cool hot tea fast.\nAnswer: Add an ice cube.\n\n", 0),
    "boolq": ({"question": "is the sky green", "passage": "The sky looks blue on a clear day.",
               "idx": 0, "label": 0},
              {"question": "is snow cold", "passage": "Snow is frozen water.", "idx": 1, "label": 1},
              [("The sky looks blue on a clear day.\nQuestion: is the sky green?\nAnswer:", " no"),
               ("The sky looks blue on a clear day.\nQuestion: is the sky green?\nAnswer:", " yes")],
              "Snow is frozen water.\nQuestion: is snow cold?\nAnswer: yes\n\n", 0),
    "siqa": ({"context": "Ben dropped his ice cream.", "question": "How would Ben feel?",
              "answerA": "sad", "answerB": "rich", "answerC": "tall", "label": "1"},
             {"context": "Kim won the race.", "question": "What will Kim want to do?",
              "answerA": "lose", "answerB": "hide", "answerC": "celebrate", "label": "3"},
             [("Q: Ben dropped his ice cream. How would Ben feel?\nA:", " sad"),
              ("Q: Ben dropped his ice cream. How would Ben feel?\nA:", " rich"),
              ("Q: Ben dropped his ice cream. How would Ben feel?\nA:", " tall")],
             "Q: Kim won the race. What will Kim want to do?\nA: celebrate\n\n", 0),
    "openbookqa": ({"id": "1", "question_stem": "Sound travels fastest through",
                    "choices": {"text": ["air", "steel"], "label": ["A", "B"]}, "answerKey": "B"},
                   {"id": "2", "question_stem": "Plants take in",
                    "choices": {"text": ["gold", "carbon dioxide"], "label": ["A", "B"]},
                    "answerKey": "B"},
                   [("Sound travels fastest through", " air"),
                    ("Sound travels fastest through", " steel")],
                   "Plants take in carbon dioxide\n\n", 1),
    # the option fills the blank, the context ends there; the rest is the same continuation
    "winogrande": ({"sentence": "Jo gave the ball to Al because _ was done playing.",
                    "option1": "Jo", "option2": "Al", "answer": "1"},
                   {"sentence": "The ice melted in the sun because _ was warm.",
                    "option1": "the ice", "option2": "the sun", "answer": "2"},
                   [("Jo gave the ball to Al because Jo", " was done playing."),
                    ("Jo gave the ball to Al because Al", " was done playing.")],
                   "The ice melted in the sun because the sun was warm.\n\n", 0),
    "truthfulqa_mc1": (tf("Is the Earth flat?", "No, it is round.", "Yes."),
                       tf("Can pigs fly?", "No, pigs cannot fly.", "Yes."),
                       [(QA + "\n\nQ: Is the Earth flat?\nA:", " No, it is round."),
                        (QA + "\n\nQ: Is the Earth flat?\nA:", " Yes.")],
                       QA + "\n\nQ: Can pigs fly?\nA: No, pigs cannot fly.\n\n", 0),
}
CASES["truthfulqa_mc2"] = CASES["truthfulqa_mc1"]


def write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


def requests(path, shots):
    items = tasks.read_task(path)
    return [tasks.requests_of(c, it) for c, it in zip(tasks.contexts(path, items, shots), items)]


@pytest.mark.parametrize("task", NEW)
def test_requests_are_lm_eval_s_by_hand(task, tmp_path):
    item, shot, want, shot_text, gold = CASES[task]
    path = write(tmp_path / f"{task}.jsonl", [item])
    assert requests(path, 0) == [want]
    assert tasks.read_task(path)[0].gold == gold
    # one shot: the solved shot, a blank line, then the item. The pool holds the shot twice, so
    # that whichever two a task that draws one more draws, the shot is the one it keeps
    write(tmp_path / os.path.basename(tasks.shots_file(path)), [shot, shot])
    assert requests(path, 1) == [[(shot_text + c, k) for c, k in want]]


def test_shot_files_and_published_counts(tmp_path):
    # lm-eval's splits: train, but TruthfulQA draws from the validation split it scores
    assert [os.path.basename(tasks.shots_file(f"/x/{t}.jsonl")) for t in NEW] == [
        "piqa.train.jsonl", "boolq.train.jsonl", "siqa.train.jsonl", "openbookqa.train.jsonl",
        "winogrande.train.jsonl", "truthfulqa_mc1.validation.jsonl",
        "truthfulqa_mc2.validation.jsonl"]
    for t in NEW:
        shutil.copy(os.path.join(EVALS, f"{t}.jsonl"), tmp_path / f"{t}.jsonl")
        shutil.copy(os.path.join(EVALS, f"{t}.jsonl"), tasks.shots_file(str(tmp_path / f"{t}.jsonl")))
    # the shot files are not tasks; the counts are the Open LLM Leaderboard's (WinoGrande 5,
    # TruthfulQA 0) and the 0-shot of the papers for the rest
    assert ev.settings(suites.task_files(str(tmp_path)), None) == dict(
        piqa=0, boolq=0, siqa=0, openbookqa=0, winogrande=5, truthfulqa_mc1=0, truthfulqa_mc2=0)


def test_shots_are_drawn_as_lm_eval_draws_them(tmp_path):
    # a test split unset, as PIQA's, BoolQ's, SIQA's, WinoGrande's, TruthfulQA's: lm-eval 0.4.13
    # draws n + 1 and keeps n (the item dropped, were it drawn); OpenBookQA has a test split
    # and draws n. Three items one shot each from five: the third item's shot tells them apart
    def piqa(i):
        return {"goal": f"g{i}", "sol1": f"a{i}", "sol2": f"b{i}", "label": 1}

    def obqa(i):
        return {"id": str(i), "question_stem": f"s{i}",
                "choices": {"text": [f"a{i}", f"b{i}"], "label": ["A", "B"]}, "answerKey": "B"}
    got = {}
    for task, row, extra in (("piqa", piqa, 1), ("openbookqa", obqa, 0)):
        path = write(tmp_path / f"{task}.jsonl", [row(i) for i in range(3)])
        write(tmp_path / f"{task}.train.jsonl", [row(10 + j) for j in range(5)])
        rnd = random.Random(1234)
        picks = [rnd.sample(range(5), 1 + extra)[0] for _ in range(3)]
        got[task] = picks
        prompt = (lambda r: f"Question: {r['goal']}\nAnswer: {r['sol2']}\n\n" if task == "piqa"
                  else f"{r['question_stem']} b{r['id']}\n\n")
        want = [prompt(row(10 + j)) for j in picks]
        assert [c[0][0] for c in requests(path, 1)] == [
            w + (f"Question: g{i}\nAnswer:" if task == "piqa" else f"s{i}")
            for i, w in enumerate(want)]
    assert got["piqa"] != got["openbookqa"]  # the test can tell one draw from the other


# -----------------------------------------------------------------------------
# the metrics by hand

def fake_scores(monkeypatch, values):
    """tasks.loglikelihoods answering values[i] for the i-th request; the requests are kept."""
    seen = []

    def fake(model, reqs, *a, **k):
        seen.extend(reqs)
        return list(values[:len(reqs)])
    monkeypatch.setattr(tasks, "loglikelihoods", fake)
    return seen


def test_mc2_is_the_normalized_probability_of_the_true_answers(enc, tmp_path, monkeypatch):
    def mc2(q, labels):
        return {"question": q, "mc1_targets": {"choices": ["t", "f"], "labels": [1, 0]},
                "mc2_targets": {"choices": [f"c{i}" for i in range(len(labels))], "labels": labels}}
    path = write(tmp_path / "truthfulqa_mc2.jsonl", [mc2("q1", [1, 1, 0]), mc2("q2", [1, 0])])
    lls = [-1.0, -2.0, -0.5, -3.0, -1.25]
    fake_scores(monkeypatch, lls)
    r = tasks.run_task(None, enc, path, 0)
    # by hand, in float64: exp of each log-likelihood, the true ones' share of the item's sum
    e = [math.exp(v) for v in lls]
    m1, m2 = (e[0] + e[1]) / (e[0] + e[1] + e[2]), e[3] / (e[3] + e[4])
    assert r["acc"] == pytest.approx((m1 + m2) / 2, rel=1e-12)
    assert r["acc_stderr"] == pytest.approx(abs(m1 - m2) / math.sqrt(2) / math.sqrt(2), rel=1e-12)
    assert "acc_norm" not in r and r["n"] == 2
    # long answers: lm-eval's exp(ll) is 0 for both and its share 0/0; the same share, taken
    # after the largest log-likelihood, is the number it stands for
    assert tasks.true_mass([-800.0, -801.0], [1, 0]) == pytest.approx(1 / (1 + math.exp(-1)),
                                                                       rel=1e-12)
    # MC1 on the same item picks: acc 1 where the true (first) answer is the likeliest
    path = write(tmp_path / "truthfulqa_mc1.jsonl", [mc2("q1", [1, 0])])
    fake_scores(monkeypatch, [-2.0, -1.0])
    assert tasks.run_task(None, enc, path, 0)["acc"] == 0.0


@pytest.mark.parametrize("answer, acc", [("1", 0.0), ("2", 1.0)])
def test_winogrande_scores_the_same_end_after_each_option(answer, acc, enc, tmp_path,
                                                          monkeypatch):
    row = {"sentence": "Jo gave the ball to Al because _ was done playing.", "option1": "Jo",
           "option2": "Al", "answer": answer}
    path = write(tmp_path / "winogrande.jsonl", [row])
    seen = fake_scores(monkeypatch, [-7.0, -4.0])  # the continuation after "...because Al" is likelier
    r = tasks.run_task(None, enc, path, 0)
    assert [enc.decode(c) for c, _ in seen] == ["Jo gave the ball to Al because Jo",
                                                "Jo gave the ball to Al because Al"]
    assert [enc.decode(k) for _, k in seen] == [" was done playing."] * 2
    assert seen[0][1] == seen[1][1]  # the same tokens scored under each context
    assert r["acc"] == acc and "acc_norm" not in r


# -----------------------------------------------------------------------------
# the real path: a model's forward

def reference(model, enc, context_and_continuation):
    """log P(continuation | context), one request in one forward of its own, in float64: the
    continuation's tokens by lm-eval's boundary rule, the input cut to the model's window from
    the left."""
    ctx, cont = tasks.encode_pair(enc, *context_and_continuation)
    ids = (ctx + cont)[-(model.cfg.max_seq_len + 1):]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).double(), -1)[0]
    pos = range(len(ids) - 1 - len(cont), len(ids) - 1)
    return sum(logp[p, t].item() for p, t in zip(pos, cont))


@pytest.mark.parametrize("shots", [0, 1])
def test_every_new_task_against_one_forward_per_request(shots, enc, tmp_path):
    torch.manual_seed(0)
    model = parallel.build_model(ModelConfig(vocab_size=enc.n_vocab, n_layer=2, d_model=32,
                                             n_head=2, ffn_hidden=64, max_seq_len=1024),
                                 "cpu", 0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # preferences well apart, no near-ties
    for task in NEW:
        path = str(tmp_path / f"{task}.jsonl")
        shutil.copy(os.path.join(EVALS, f"{task}.jsonl"), path)
        shutil.copy(path, tasks.shots_file(path))
        r = tasks.run_task(model, enc, path, shots, batch_size=3)
        items = tasks.read_task(path)
        hits, norm = [], []
        k = 0 if task.startswith("truthfulqa") else shots  # lm-eval pins TruthfulQA at 0
        for item, reqs in zip(items, requests(path, k)):
            ll = [reference(model, enc, q) for q in reqs]
            if task == "truthfulqa_mc2":
                p = np.exp(np.array(ll) - max(ll))
                hits.append(p[np.array(item.labels) == 1].sum() / p.sum())
            else:
                hits.append(float(np.argmax(ll) == item.gold))
            norm.append(float(np.argmax([v / len(c) for v, c in zip(ll, item.choices)]) == item.gold))
        assert r["acc"] == pytest.approx(np.mean(hits), abs=1e-6), task
        assert r["acc_stderr"] == pytest.approx(np.std(hits, ddof=1) / math.sqrt(len(hits)), abs=1e-6)
        assert 0 <= r["acc"] <= 1 and r["n"] == len(items) >= 4 and r["shots"] == k
        if task in ("winogrande", "truthfulqa_mc2"):
            assert "acc_norm" not in r
        else:
            assert r["acc_norm"] == np.mean(norm), task


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    """A tiny run with one checkpoint, its model's window 64 tokens."""
    out = tmp_path_factory.mktemp("tasks_more") / "run"
    train.main(small_args(tiny_data, str(out), "--max_steps=1", "--ckpt_interval=1"))
    return out


def test_a_sweep_scores_the_new_tasks(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tasks, "_said", set())  # warnings said by other tests are said again
    folder = tmp_path / "evals"
    folder.mkdir()
    for task in NEW:
        shutil.copy(os.path.join(EVALS, f"{task}.jsonl"), folder / f"{task}.jsonl")
        shutil.copy(folder / f"{task}.jsonl", tasks.shots_file(str(folder / f"{task}.jsonl")))
    row = ev.sweep(str(run / "ckpt_0000001"), str(folder), shots=1, seqs=2)[0]
    assert row["tasks"] == {t: 0 if t.startswith("truthfulqa") else 1 for t in NEW}  # pinned
    for task in NEW:
        assert 0 <= row[f"{task}/acc"] <= 1 and math.isfinite(row[f"{task}/acc_stderr"]), task
        assert (f"{task}/acc_norm" in row) == (task not in ("winogrande", "truthfulqa_mc2")), task
    # TruthfulQA's six-question preamble is longer than the toy model's 64 tokens: cut, and said
    n = sum(len(it.choices) for it in tasks.read_task(str(folder / "truthfulqa_mc1.jsonl")))
    assert f"truthfulqa_mc1.jsonl: {n} of {n} requests are longer" in capsys.readouterr().err


def test_a_sweep_with_contamination_scores_the_clean_items_apart(run, tmp_path):
    # an item planted in the training documents: acc on the other items equals a sweep of a file
    # without it (at 0 shots an item's score does not depend on the others)
    import decont
    folder, docs, clean = tmp_path / "evals", tmp_path / "docs", tmp_path / "clean"
    for d in (folder, docs, clean):
        d.mkdir()
    raw = open(os.path.join(EVALS, "arc_easy.jsonl"), encoding="utf-8").read().splitlines()
    (folder / "arc_easy.jsonl").write_text("\n".join(raw) + "\n", encoding="utf-8")
    line = next(k for k, l in enumerate(raw, 1) if len(decont.grams(decont.item_text(json.loads(l)))[0]))
    text = "Homework.\n" + decont.item_text(json.loads(raw[line - 1])).upper()
    (docs / "d.jsonl").write_text(json.dumps({"id": "x", "text": text}) + "\n", encoding="utf-8")
    row = ev.sweep(str(run / "ckpt_0000001"), str(folder), shots=0, seqs=2, contamination=str(docs))[0]
    (clean / "arc_easy.jsonl").write_text("\n".join(l for k, l in enumerate(raw, 1) if k != line) + "\n",
                                          encoding="utf-8")
    ref = ev.sweep(str(run / "ckpt_0000001"), str(clean), shots=0, seqs=2)[0]
    assert row["contamination"] == {"arc_easy.jsonl": [line]}
    assert (row["arc_easy/n_contaminated"], row["arc_easy/n_clean"]) == (1, len(raw) - 1)
    assert row["arc_easy/acc_clean"] == pytest.approx(ref["arc_easy/acc"], abs=1e-9)
    assert row["arc_easy/acc_norm_clean"] == pytest.approx(ref["arc_easy/acc_norm"], abs=1e-9)
    assert "arc_easy/acc_clean" not in ref
