"""RACE and CrowS-Pairs (English) as lm-evaluation-harness 0.4.13 scores them: RACE's prompt (the
article, its earlier problems answered, the last question) against strings worked by hand from
race/preprocess_race.py; CrowS-Pairs' two sentences each scored whole after no context, its
likelihood_diff and pct_stereotype (crows_pairs/utils.py) and their standard errors against a
float64 forward of a toy model and lm-eval's mean_stderr written out; the per-category files;
shots from the test split lm-eval falls back to, and refused without it; every bad item one line
naming the file, the line and the field."""
import copy, json, math, os, random, shutil, sys

import numpy as np
import pytest
import torch

import eval as ev
import parallel
import tasks
import train
from config import ModelConfig, run_command
from helpers import ROOT, small_args
from stage import DataError

EVALS = os.path.join(ROOT, "data", "evals")


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False))
                            + "\n" for r in rows), encoding="utf-8")
    return str(path)


def race_row(article, problems):
    """A row as EleutherAI/race holds it: the problems as the text of a Python list."""
    return {"article": article, "problems": str(problems)}


def problem(question, options, answer):
    return {"answer": answer, "options": options, "question": question}


def pair(more, less, bias="age"):
    return {"id": 0, "sent_more": more, "sent_less": less, "stereo_antistereo": "stereo",
            "bias_type": bias, "annotations": [[bias]], "anon_writer": "a0",
            "anon_annotators": ["a1"]}


def requests(path, shots=0):
    items = tasks.read_task(path)
    return [tasks.requests_of(c, it) for c, it in zip(tasks.contexts(path, items, shots), items)]


@pytest.fixture(scope="module")
def model(enc):
    torch.manual_seed(0)
    m = parallel.build_model(ModelConfig(vocab_size=enc.n_vocab, n_layer=2, d_model=32, n_head=2,
                                         ffn_hidden=64, max_seq_len=1024), "cpu", 0).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(30)  # preferences well apart, no near-ties
    return m


def reference(model, enc, context_and_continuation):
    """log P(continuation | context) in float64: a float64 copy of the model, one forward of
    the request alone, its tokens by lm-eval's boundary rule (an empty context: the prefix
    token)."""
    ctx, cont = tasks.encode_pair(enc, *context_and_continuation)
    model64 = copy.deepcopy(model).double()
    ids = ctx + cont
    with torch.no_grad():
        logp = torch.log_softmax(model64(torch.tensor([ids[:-1]])), -1)[0]
    assert logp.dtype == torch.float64
    return sum(logp[p, t].item() for p, t in zip(range(len(ctx) - 1, len(ids) - 1), cont))


def mean_stderr(xs):
    """lm_eval/api/metrics.py's mean_stderr: sample_stddev(arr) / sqrt(len(arr))."""
    mu = sum(xs) / len(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)) / math.sqrt(len(xs))


# -----------------------------------------------------------------------------
# RACE: race/preprocess_race.py's doc_to_text, doc_to_choice, doc_to_target

GARDEN_PROBLEMS = [
    problem("When do they plant it?", ["in autumn", "in spring", "at night", "never"], "B"),
    problem("The garden was started by  _  .", ["a teacher", "a cook", "a cat", "a king"], "A"),
    problem("What do they grow?", ["rocks", "beans", "cars", "coins"], "B")]
GARDEN = race_row("Pupils plant a garden each spring.", GARDEN_PROBLEMS)
UMBRELLA = race_row("Maria lost her umbrella on the bus.", [
    problem("Where was it lost?", ["at home", "at school", "in a shop", "on the bus"], "D"),
    problem("The passage is mainly about  _  .", ["a bus", "a lost umbrella", "rain", "a shop"],
            "B")])


def test_race_prompt_is_lm_eval_s_by_hand(tmp_path):
    # the earlier problems answered: a question as "Question: q\nAnswer: a\n", a cloze question
    # ("...  _  .") with its blank filled and its " ." dropped; then the last question bare, and
    # " " + each of its options after it
    path = write(tmp_path / "race.jsonl", [GARDEN, UMBRELLA])
    garden = ("Article: Pupils plant a garden each spring.\n\n"
              "Question: When do they plant it?\nAnswer: in spring\n"
              "The garden was started by a teacher\n"
              "What do they grow?")
    umbrella = ("Article: Maria lost her umbrella on the bus.\n\n"
                "Question: Where was it lost?\nAnswer: on the bus\n"
                "The passage is mainly about  _  .")
    assert requests(path) == [[(garden, " rocks"), (garden, " beans"), (garden, " cars"),
                               (garden, " coins")],
                              [(umbrella, " a bus"), (umbrella, " a lost umbrella"),
                               (umbrella, " rain"), (umbrella, " a shop")]]
    assert [it.gold for it in tasks.read_task(path)] == [1, 1]  # the last problem's answer
    # one problem: the article and the question alone; problems as a JSON list read the same
    one = race_row("A short text.", [problem("Is it short?", ["yes", "no", "maybe", "?"], "A")])
    assert requests(write(tmp_path / "race_one.jsonl", [one]))[0][0] == (
        "Article: A short text.\n\nIs it short?", " yes")
    as_list = dict(GARDEN, problems=GARDEN_PROBLEMS)
    assert requests(write(tmp_path / "race_list.jsonl", [as_list])) == requests(path)[:1]


def test_race_through_the_model_against_float64(model, enc, tmp_path):
    path = str(tmp_path / "race.jsonl")
    shutil.copy(os.path.join(EVALS, "race.jsonl"), path)
    r = tasks.run_task(model, enc, path, batch_size=3)
    items, hits, norm = tasks.read_task(path), [], []
    for item, reqs in zip(items, requests(path)):
        ll = [reference(model, enc, q) for q in reqs]
        hits.append(float(np.argmax(ll) == item.gold))
        norm.append(float(np.argmax([v / len(c) for v, c in zip(ll, item.choices)]) == item.gold))
    assert r == pytest.approx(dict(acc=np.mean(hits), acc_stderr=mean_stderr(hits),
                                   acc_norm=np.mean(norm), acc_norm_stderr=mean_stderr(norm),
                                   n=4, shots=0), abs=1e-9)


# -----------------------------------------------------------------------------
# CrowS-Pairs: crows_pairs_english.yaml (doc_to_text "", target_delimiter "") and utils.py

def test_crows_scores_each_sentence_whole_after_the_prefix_token(enc, tmp_path):
    path = write(tmp_path / "crows_pairs_english.jsonl", [pair("Old men are slow.",
                                                              "Young men are slow.")])
    assert requests(path) == [[("", "Old men are slow."), ("", "Young men are slow.")]]
    # lm-eval's empty context: the model's prefix token, the sentence's tokens all scored
    assert tasks.encode_pair(enc, "", "Old men are slow.") == (
        [enc.prefix_token], enc.encode_ordinary("Old men are slow."))


def test_crows_metrics_by_hand_from_float64_log_likelihoods(model, enc, tmp_path):
    path = str(tmp_path / "crows_pairs_english.jsonl")
    shutil.copy(os.path.join(EVALS, "crows_pairs_english.jsonl"), path)
    r = tasks.run_task(model, enc, path, batch_size=3)
    assert set(r) == {"likelihood_diff", "likelihood_diff_stderr", "pct_stereotype",
                      "pct_stereotype_stderr", "n", "shots"}  # no acc: no right answer
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    more = [reference(model, enc, ("", row["sent_more"])) for row in rows]
    less = [reference(model, enc, ("", row["sent_less"])) for row in rows]
    assert min(abs(a - b) for a, b in zip(more, less)) > 1e-3  # no near-tie to flip in float32
    diff = [abs(a - b) for a, b in zip(more, less)]
    stereo = [1.0 if a > b else 0.0 for a, b in zip(more, less)]
    assert 0 < sum(stereo) < len(stereo)  # both outcomes, so the stderr is not 0
    assert r["likelihood_diff"] == pytest.approx(sum(diff) / len(diff), abs=1e-4)
    assert r["likelihood_diff_stderr"] == pytest.approx(mean_stderr(diff), abs=1e-4)
    assert r["pct_stereotype"] == sum(stereo) / len(stereo)
    assert r["pct_stereotype_stderr"] == pytest.approx(mean_stderr(stereo), rel=1e-12)
    assert r["n"] == len(rows) == 6 and r["shots"] == 0


def test_pct_stereotype_stderr_is_lm_eval_s_formula(enc, tmp_path, monkeypatch):
    # four pairs, log-likelihoods given: sent_more likelier in three, a tie in the fourth (not
    # a stereotype: lm-eval asks likelihood1 > likelihood2)
    path = write(tmp_path / "crows_pairs_english.jsonl",
                 [pair(f"more {i}.", f"less {i}.") for i in range(4)])
    lls = [-10.0, -12.0, -5.0, -6.5, -20.0, -20.25, -7.0, -7.0]
    monkeypatch.setattr(tasks, "loglikelihoods", lambda model, reqs, *a, **k: lls[:len(reqs)])
    r = tasks.run_task(None, enc, path)
    # pct 3/4; sample stddev sqrt(n p (1 - p) / (n - 1)) = sqrt(4 * 3/16 / 3) = 1/2, over sqrt(4)
    assert r["pct_stereotype"] == 0.75 and r["pct_stereotype_stderr"] == pytest.approx(0.25,
                                                                                       rel=1e-12)
    diffs = [2.0, 1.5, 0.25, 0.0]  # mean 0.9375; deviations 1.0625, 0.5625, -0.6875, -0.9375
    sd = math.sqrt((1.0625 ** 2 + 0.5625 ** 2 + 0.6875 ** 2 + 0.9375 ** 2) / 3)
    assert r["likelihood_diff"] == pytest.approx(np.mean(diffs), rel=1e-12)
    assert r["likelihood_diff_stderr"] == pytest.approx(sd / 2, rel=1e-12)


def test_a_crows_category_file_keeps_its_bias_type(tmp_path):
    rows = [pair("a.", "b.", "age"), pair("c.", "d.", "race-color"), pair("e.", "f.", "age"),
            pair("g.", "h.", "gender")]
    # utils.filter_dataset: bias_type.startswith(category), "_" in the task's name read as "-"
    for name, kept in (("crows_pairs_english_age", ["a.", "e."]),
                       ("crows_pairs_english_race_color", ["c."]),
                       ("crows_pairs_english_religion", []),
                       ("crows_pairs_english", ["a.", "c.", "e.", "g."]),
                       ("crows_pairs_english_mine", ["a.", "c.", "e.", "g."])):  # no category
        path = write(tmp_path / f"{name}.jsonl", rows)
        assert [it.choices[0] for it in tasks.read_task(path)] == kept, name
    assert tasks.bias_of("/x/crows_pairs_english_sexual_orientation.test.jsonl") == \
        "sexual-orientation"  # its shots' file keeps the same items, as lm-eval's process_docs
    with pytest.raises(DataError, match="no items, so no score"):
        tasks.task_prompts(str(tmp_path / "crows_pairs_english_religion.jsonl"), 0)


# -----------------------------------------------------------------------------
# shots: race.yaml and crows_pairs_english.yaml name no split but test; lm-eval (api/task.py
# Task.fewshot_docs) then draws from the test docs, not dropping the item (its fewshot split,
# None, is not its test split "test")

def test_shots_come_from_a_copy_of_the_test_split_the_item_included(tmp_path):
    path = str(tmp_path / "race.jsonl")
    shutil.copy(os.path.join(EVALS, "race.jsonl"), path)
    assert os.path.basename(tasks.shots_file(path)) == "race.test.jsonl"
    assert tasks.shots_of(path) == 0  # no shots file: 0, as the published count is
    shutil.copy(path, tasks.shots_file(path))
    assert tasks.shots_of(path) == 0  # with one too: SHOTS race=0
    items = tasks.read_task(path)
    rnd = random.Random(1234)  # one draw of 2 from the 4 items per item, in order
    picks = [rnd.sample(range(4), 2) for _ in items]
    assert any(i in p for i, p in enumerate(picks))  # an item drawn as its own shot: kept
    assert tasks.contexts(path, items, 2) == [
        "".join(f"{items[j].prompt} {items[j].choices[items[j].gold]}\n\n" for j in p)
        + it.prompt for p, it in zip(picks, items)]
    # CrowS-Pairs' shot: its sent_more alone (no text, no delimiter) and a blank line
    path = write(tmp_path / "crows_pairs_english.jsonl", [pair("m0.", "l0."), pair("m1.", "l1.")])
    shutil.copy(path, tasks.shots_file(path))
    pick = random.Random(1234).sample(range(2), 1)[0]
    assert requests(path, 1)[0] == [(f"m{pick}.\n\n", "m0."), (f"m{pick}.\n\n", "l0.")]


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    """A tiny run with one checkpoint."""
    out = tmp_path_factory.mktemp("race_crows") / "run"
    train.main(small_args(tiny_data, str(out), "--max_steps=1", "--ckpt_interval=1"))
    return out


def test_shots_without_the_test_copy_are_one_line(run, tmp_path, capsys, monkeypatch):
    for task in ("race", "crows_pairs_english"):
        folder = tmp_path / task
        folder.mkdir()
        shutil.copy(os.path.join(EVALS, f"{task}.jsonl"), folder / f"{task}.jsonl")
        monkeypatch.setattr(sys, "argv", ["eval.py", str(run / "ckpt_0000001"),
                                          f"--tasks={folder}", "--shots=1", "--seqs=2"])
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run_command(ev.main, DataError, ValueError)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: {folder / f'{task}.test.jsonl'}: not there, and "
                              f"{folder / f'{task}.jsonl'} is asked 1 shots"), err


# -----------------------------------------------------------------------------
# bad items: one line naming the file, the line and the field

def kind(task, field, shown, what="text"):
    return (f"a field holds another kind of value than {task} reads: {field} is {shown}, not "
            f"{what} (data/evals/README.md lists the fields)")


def race_with(**fields):
    return json.dumps({**GARDEN, **fields})


def race_problems(*problems):
    return race_with(problems=str(list(problems)))


GOOD = problem("q?", ["a", "b", "c", "d"], "A")
PROBLEMS = "a list of problems [{'question', 'options', 'answer'}]"
BAD = {  # id: (file's task name, the bad line, what is said after FILE:2:)
    "race article missing": ("race", json.dumps({"problems": GARDEN["problems"]}),
                             "missing field 'article' (this file is read as race, which needs "
                             "article, problems)"),
    "race article null": ("race", race_with(article=None), kind("race", "article", "null")),
    "race problems not a literal": ("race", race_with(problems="[{'question': 'q'"),
                                    kind("race", "problems", "\"[{'question': 'q'\"", PROBLEMS)),
    "race problems empty": ("race", race_with(problems="[]"),
                            kind("race", "problems", "'[]'", PROBLEMS)),
    "race problems a number": ("race", race_with(problems=7), kind("race", "problems", "7",
                                                                   PROBLEMS)),
    "race a problem a text": ("race", race_problems(GOOD, "q"),
                              kind("race", "problems[1]", "'q'",
                                   "a problem {'question', 'options', 'answer'}")),
    "race three options": ("race", race_problems(problem("q?", ["a", "b", "c"], "A"), GOOD),
                           kind("race", "problems[0].options", '["a", "b", "c"]',
                                "a list of 4 texts")),
    "race an option null": ("race", race_problems(GOOD, problem("q?", ["a", None, "c", "d"], "A")),
                            kind("race", "problems[1].options[1]", "null")),
    "race the last problem's option empty": (
        "race", race_problems(GOOD, problem("q?", ["a", "b", "", "d"], "A")),
        kind("race", "problems[1].options[2]", "''", "an answer of one character or more")),
    "race question null": ("race", race_problems(problem(None, ["a", "b", "c", "d"], "A")),
                           kind("race", "problems[0].question", "null")),
    "race answer E": ("race", race_problems(problem("q?", ["a", "b", "c", "d"], "E"), GOOD),
                      "problems[0].answer is 'E', not an answer race can read (A-D: one of its 4 "
                      "choices)"),
    "race answer a number": ("race", race_problems(GOOD, problem("q?", ["a", "b", "c", "d"], 1)),
                             "problems[1].answer is 1, not an answer race can read (A-D: one of "
                             "its 4 choices)"),
    "crows sent_more missing": ("crows_pairs_english", json.dumps({"sent_less": "b."}),
                                "missing field 'sent_more' (this file is read as "
                                "crows_pairs_english, which needs sent_more, sent_less)"),
    "crows sent_less null": ("crows_pairs_english", json.dumps(pair("a.", None)),
                             kind("crows_pairs_english", "sent_less", "null")),
    "crows sent_more empty": ("crows_pairs_english", json.dumps(pair("", "b.")),
                              kind("crows_pairs_english", "sent_more", "''",
                                   "an answer of one character or more")),
    "crows bias_type a number": ("crows_pairs_english", json.dumps(pair("a.", "b.", 3)),
                                 kind("crows_pairs_english", "bias_type", "3")),
    "crows category without bias_type": ("crows_pairs_english_age",
                                         json.dumps({"sent_more": "a.", "sent_less": "b."}),
                                         "missing field 'bias_type' (this file is read as "
                                         "crows_pairs_english, which needs bias_type)"),
    "crows a bare number": ("crows_pairs_english", "7",
                            "not a JSON object (an item is one, with fields)"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_item_is_one_line_naming_file_line_and_field(case, tmp_path):
    name, line, said = BAD[case]
    good = json.dumps(GARDEN if name == "race" else pair("a.", "b."))
    path = tmp_path / f"{name}.jsonl"
    path.write_text(good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        tasks.read_task(str(path))
    assert str(e.value) == f"{path}:2: {said}"
