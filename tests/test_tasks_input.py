"""What a task file can hold that it should not, and requests longer than the model: every bad
item of each format (HellaSwag, ARC, MMLU, C-Eval, CMMLU) is one line naming the file, the line
and the field, from the task loader and from `python eval.py` itself; an empty task file is an
error, never a row of nan; a request longer than the model's window is cut from the left as
lm-eval cuts it, and one warning per task says how many were."""
import json, os, shutil, sys

import pytest
import torch
import torch.nn.functional as F

import eval as ev
import tasks
import suites
import train
from config import run_command
from helpers import ROOT, sha, small_args
from stage import DataError

EVALS = os.path.join(ROOT, "data", "evals")


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    """A tiny run with two checkpoints (steps 1 and 2), its model's window 64 tokens."""
    out = tmp_path_factory.mktemp("tasks_input") / "run"
    train.main(small_args(tiny_data, str(out), "--max_steps=2", "--ckpt_interval=1",
                          "--keep_last=5"))
    return out


def last(run):
    return str(run / "ckpt_0000002")


def warnings(capsys):
    """The warning lines said on stderr since the last look."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]


def sweep_fails(argv, capsys, monkeypatch):
    """What `python eval.py argv` prints when it fails: exactly one line, `error: ...`,
    status 2."""
    monkeypatch.setattr(sys, "argv", ["eval.py", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_command(ev.main, DataError, ValueError)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err[len("error: "):-1]


def table(run):
    """The run's evals.jsonl as it is (None when there is none)."""
    log = run / "evals.jsonl"
    return log.read_text() if log.exists() else None


def good_line(task):
    """The first item of data/evals' file of task, as written there."""
    with open(os.path.join(EVALS, f"{task}.jsonl"), encoding="utf-8") as f:
        return f.readline()


def changed(task, **fields):
    return json.dumps({**json.loads(good_line(task)), **fields}, ensure_ascii=False)


# -----------------------------------------------------------------------------
# 1. a bad item is one line: the file, the line, the field

def answer(task, field, value, shown, how, n=4):
    """(task, a line whose answer field holds value, what is said of it)."""
    return (task, changed(task, **{field: value}),
            f"{field} is {shown}, not an answer {task} can read ({how}: one of its {n} choices)")


def arc_key(task, value, shown):
    return task, changed(task, answerKey=value), (f"answerKey {shown} is not one of the labels "
                                                  "['A', 'B', 'C', 'D']")


def kind(task, line, field, shown, what="text"):
    """(task, line, what is said of its field holding a value of another kind)."""
    return task, line, (f"a field holds another kind of value than {task} reads: {field} is "
                        f"{shown}, not {what} (data/evals/README.md lists the fields)")


def arc(question, **flat):
    return json.dumps({"question": question, **flat, "answerKey": "A"})


NOT_AN_OBJECT = "not a JSON object (an item is one, with fields)"
BAD = {  # id: (task, the bad line, what is said after FILE:2:)
    # a label or answer that is not a number, or not a letter the item has
    "hellaswag label a word": answer("hellaswag", "label", "x", "'x'", "0-3"),
    "hellaswag label a letter": answer("hellaswag", "label", "A", "'A'", "0-3"),
    "hellaswag label 1.5": answer("hellaswag", "label", 1.5, "1.5", "0-3"),
    "hellaswag label true": answer("hellaswag", "label", True, "true", "0-3"),
    "mmlu answer a word": answer("mmlu", "answer", "x", "'x'", "0-3 or A-D"),
    "mmlu answer E": answer("mmlu", "answer", "E", "'E'", "0-3 or A-D"),
    "mmlu answer 4": answer("mmlu", "answer", 4, "4", "0-3 or A-D"),
    "ceval answer E": answer("ceval", "answer", "E", "'E'", "A-D"),
    "ceval answer a number": answer("ceval", "answer", "1", "'1'", "A-D"),
    "cmmlu Answer E": answer("cmmlu", "Answer", "E", "'E'", "A-D"),
    "cmmlu Answer null": answer("cmmlu", "Answer", None, "null", "A-D"),
    "arc answerKey E": arc_key("arc_easy", "E", "'E'"),
    "arc answerKey a number": arc_key("arc_challenge", 1, "1"),
    # a negative answer
    "hellaswag label -1": answer("hellaswag", "label", -1, "-1", "0-3"),
    "hellaswag label '-1'": answer("hellaswag", "label", "-1", "'-1'", "0-3"),
    "mmlu answer -1": answer("mmlu", "answer", -1, "-1", "0-3 or A-D"),
    "ceval answer -1": answer("ceval", "answer", -1, "-1", "A-D"),
    "cmmlu Answer -1": answer("cmmlu", "Answer", -1, "-1", "A-D"),
    "arc answerKey -1": arc_key("arc_easy", -1, "-1"),
    # a null question, or another field of another kind
    "hellaswag ctx null": kind("hellaswag", changed("hellaswag", ctx=None), "ctx", "null"),
    "hellaswag ctx_a null": kind("hellaswag", changed("hellaswag", ctx_a=None, ctx_b="b"),
                                 "ctx_a", "null"),
    "hellaswag an ending null": kind("hellaswag", changed("hellaswag", endings=["a", None, "c"]),
                                     "endings[1]", "null"),
    "hellaswag an ending empty": kind("hellaswag", changed("hellaswag", endings=["a", "b", ""]),
                                      "endings[2]", "''", "an answer of one character or more"),
    "arc question null": kind("arc_easy", changed("arc_easy", question=None), "question", "null"),
    "arc stem null": kind("arc_challenge", arc({"stem": None, "choices": [
        {"text": "a", "label": "A"}]}), "question.stem", "null"),
    "arc a choice's text null": kind("arc_easy", arc({"stem": "s", "choices": [
        {"text": "a", "label": "A"}, {"text": None, "label": "B"}]}),
        "question.choices[1].text", "null"),
    "arc flat question null": kind("arc_easy", arc(None, choices={
        "text": ["a", "b"], "label": ["A", "B"]}), "question", "null"),
    "arc flat labels short": kind("arc_easy", arc("q", choices={"text": ["a", "b"],
                                                                "label": ["A"]}),
                                  "choices.label", '["A"]', "a list of 2 labels, one per text"),
    "mmlu question null": kind("mmlu", changed("mmlu", question=None), "question", "null"),
    "mmlu choices null": kind("mmlu", changed("mmlu", choices=None), "choices", "null",
                              "a list of 1 to 8 texts"),
    "mmlu subject null": kind("mmlu", changed("mmlu", subject=None), "subject", "null"),
    "ceval question null": kind("ceval", changed("ceval", question=None), "question", "null"),
    "ceval option B null": kind("ceval", changed("ceval", B=None), "B", "null"),
    "cmmlu Question null": kind("cmmlu", changed("cmmlu", Question=None), "Question", "null"),
    "cmmlu option D a number": kind("cmmlu", changed("cmmlu", D=150), "D", "150"),
    # a bare number (or another JSON value) as a line
    **{f"{task} a bare number": (task, "7", NOT_AN_OBJECT) for task in tasks.TASKS},
    "mmlu a list": ("mmlu", '["q", ["a", "b"], 0]', NOT_AN_OBJECT),
}


def said_kind(field, shown, task, what="text"):
    return kind(task, "", field, shown, what)[2]


BAD.update({  # the tasks of test_tasks_more.py
    "piqa label 2": answer("piqa", "label", 2, "2", "0-1", 2),
    "piqa label a letter": answer("piqa", "label", "A", "'A'", "0-1", 2),
    "piqa sol2 null": ("piqa", changed("piqa", sol2=None), said_kind("sol2", "null", "piqa")),
    "piqa sol1 empty": ("piqa", changed("piqa", sol1=""),
                        said_kind("sol1", "''", "piqa", "an answer of one character or more")),
    "piqa goal missing": ("piqa", json.dumps({"sol1": "a", "sol2": "b", "label": 0}),
                          "missing field 'goal' (this file is read as piqa, which needs goal, sol1, "
                          "sol2, label)"),
    "siqa answerB missing": ("siqa", json.dumps({"context": "c", "question": "q", "answerA": "a",
                                                 "answerC": "c", "label": "1"}),
                             "missing field 'answerB' (this file is read as siqa, which needs "
                             "context, question, answerA, answerB, answerC, label)"),
    "boolq label yes": answer("boolq", "label", "yes", "'yes'", "0-1", 2),
    "boolq label true": answer("boolq", "label", True, "true", "0-1", 2),
    "boolq passage null": ("boolq", changed("boolq", passage=None), said_kind("passage", "null", "boolq")),
    "siqa label 0": answer("siqa", "label", "0", "'0'", "1-3", 3),
    "siqa label 4": answer("siqa", "label", "4", "'4'", "1-3", 3),
    "siqa answerC a number": ("siqa", changed("siqa", answerC=7), said_kind("answerC", "7", "siqa")),
    "openbookqa answerKey E": ("openbookqa", changed("openbookqa", answerKey="E"),
                               "answerKey 'E' is not one of the labels ['A', 'B', 'C', 'D']"),
    "openbookqa stem null": ("openbookqa", changed("openbookqa", question_stem=None),
                             said_kind("question_stem", "null", "openbookqa")),
    "openbookqa a choice empty": ("openbookqa", changed("openbookqa", choices={
        "text": ["a", ""], "label": ["A", "B"]}), said_kind("choices.text[1]", "''", "openbookqa",
                                                       "an answer of one character or more")),
    "winogrande no blank": ("winogrande", changed("winogrande", sentence="No blank here."),
                            "sentence 'No blank here.' has no '_', the blank winogrande fills "
                            "with option1 or option2"),
    "winogrande answer 3": answer("winogrande", "answer", "3", "'3'", "1-2", 2),
    "winogrande answer empty": answer("winogrande", "answer", "", "''", "1-2", 2),  # the test split's
    "winogrande option2 null": ("winogrande", changed("winogrande", option2=None),
                                said_kind("option2", "null", "winogrande")),
    "mc1 true answer not first": ("truthfulqa_mc1", changed("truthfulqa_mc1", mc1_targets={
        "choices": ["a", "b"], "labels": [0, 1]}), "mc1_targets.labels[0] is 0, not 1 (lm-eval "
        "scores the first choice as the true answer)"),
    "mc1 labels short": ("truthfulqa_mc1", changed("truthfulqa_mc1", mc1_targets={
        "choices": ["a", "b"], "labels": [1]}), said_kind("mc1_targets.labels", "[1]", "truthfulqa_mc1",
                                                     "a list of 2 labels, 1 or 0")),
    "mc2 targets null": ("truthfulqa_mc2", changed("truthfulqa_mc2", mc2_targets=None),
                         said_kind("mc2_targets", "null", "truthfulqa_mc2",
                              '{"choices": [..], "labels": [..]}')),
    "mc2 a choice null": ("truthfulqa_mc2", changed("truthfulqa_mc2", mc2_targets={
        "choices": ["a", None], "labels": [1, 0]}),
        said_kind("mc2_targets.choices[1]", "null", "truthfulqa_mc2")),
    "mc2 question null": ("truthfulqa_mc2", changed("truthfulqa_mc2", question=None),
                          said_kind("question", "null", "truthfulqa_mc2")),
})


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_item_is_one_line_naming_file_line_and_field(case, run, tmp_path, capsys,
                                                           monkeypatch):
    task, line, said = BAD[case]
    path = tmp_path / f"{task}.jsonl"
    path.write_text(good_line(task) + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        tasks.read_task(str(path))
    assert str(e.value) == f"{path}:2: {said}"
    # the command says the same, in one line, and leaves the file and the run's table alone
    before = sha(path), table(run)
    assert sweep_fails([last(run), f"--tasks={tmp_path}", "--seqs=2"],
                       capsys, monkeypatch) == f"{path}:2: {said}"
    assert (sha(path), table(run)) == before


@pytest.mark.parametrize("task", tasks.TASKS)
def test_a_task_file_that_is_not_utf8_names_its_line(task, run, tmp_path, capsys, monkeypatch):
    path = tmp_path / f"{task}_latin1.jsonl"
    bad = changed(task).encode("utf-8").replace(b"{", b'{"note": "caf\xe9", ', 1)  # Latin-1's é
    path.write_bytes(good_line(task).encode("utf-8") * 2 + bad + b"\n")
    column = bad.index(b"\xe9") + 1
    said = f"{path}:3: not UTF-8 (byte 0xe9 at column {column}; task files are UTF-8 JSONL)"
    with pytest.raises(DataError) as e:
        tasks.read_task(str(path))
    assert str(e.value) == said
    assert sweep_fails([last(run), f"--tasks={tmp_path}", "--seqs=2"],
                       capsys, monkeypatch) == said
    shots = tmp_path / "shots"  # the few-shot file is read the same way
    shots.mkdir()
    shutil.copy(os.path.join(EVALS, f"{task}.jsonl"), shots / f"{task}.jsonl")
    shots_file = tasks.shots_file(str(shots / f"{task}.jsonl"))
    shutil.copy(path, shots_file)
    if task in tasks.PINNED:  # 0 shots whatever is asked, as lm-eval: its shot file is not read
        tasks._said.clear()
        ev.main([last(run), f"--tasks={shots}", "--shots=1", "--seqs=2"])
        assert (f"{task}.jsonl: 0 shots, not 1: lm-eval pins TruthfulQA at 0"
                in capsys.readouterr().err)
        return
    assert sweep_fails([last(run), f"--tasks={shots}", "--shots=1", "--seqs=2"],
                       capsys, monkeypatch) == said.replace(str(path), shots_file)


@pytest.mark.parametrize("task", tasks.TASKS)
@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank lines"])
def test_an_empty_task_file_is_an_error_not_a_row_of_nan(task, content, run, tmp_path, capsys,
                                                         monkeypatch):
    # an error, not a skip with a note: the folder asks for the task, and a table that lacks
    # it (or a sweep of hundreds of checkpoints that says so once, far up) reads as if scored
    shutil.copy(os.path.join(EVALS, "mmlu.jsonl"), tmp_path / "mmlu_good.jsonl")
    path = tmp_path / f"{task}_x.jsonl"
    path.write_text(content)
    assert tasks.read_task(str(path)) == []
    before = table(run)
    assert sweep_fails([last(run), f"--tasks={tmp_path}", "--seqs=2"], capsys,
                       monkeypatch) == (f"{path}: no items, so no score (an empty file: fill it, "
                                        "or take it out of the folder)")
    assert table(run) == before  # no row, so no row of nan
    path.unlink()  # the folder without it is evaluated, and its row holds numbers
    row = ev.sweep(last(run), str(tmp_path), seqs=2)[-1]
    assert row["tasks"] == {"mmlu_good": 0} and 0 <= row["mmlu_good/acc"] <= 1
    assert "nan" not in table(run).splitlines()[-1].lower()


def test_an_empty_few_shot_file_says_it_has_fewer_items_than_the_shots(run, tmp_path, capsys,
                                                                       monkeypatch):
    shutil.copy(os.path.join(EVALS, "mmlu.jsonl"), tmp_path / "mmlu.jsonl")
    (tmp_path / "mmlu.dev.jsonl").write_text("")
    assert sweep_fails([last(run), f"--tasks={tmp_path}", "--seqs=2"], capsys, monkeypatch) == (
        f"{tmp_path / 'mmlu.dev.jsonl'}: 0 items, fewer than the 5 shots asked")


def test_too_few_shots_to_draw_from_are_one_line(run, tmp_path, capsys, monkeypatch):
    # HellaSwag draws one more than the shots (lm-eval 0.4.13): 3 items cannot give 3 shots
    shutil.copy(os.path.join(EVALS, "hellaswag.jsonl"), tmp_path / "hellaswag.jsonl")
    shutil.copy(os.path.join(EVALS, "hellaswag.jsonl"), tmp_path / "hellaswag.train.jsonl")
    argv = [last(run), f"--tasks={tmp_path}", "--shots=3", "--seqs=2"]
    assert sweep_fails(argv, capsys, monkeypatch) == (f"{tmp_path / 'hellaswag.train.jsonl'}: 3 "
                                                      "items, fewer than the 3 shots asked "
                                                      "(hellaswag draws 4)")
    # ARC drops the item itself from its shots: 2 items, one of them the item, give 1 shot
    other = tmp_path / "arc"
    other.mkdir()
    shutil.copy(os.path.join(EVALS, "arc_challenge.jsonl"), other / "arc_challenge.jsonl")
    shutil.copy(os.path.join(EVALS, "arc_challenge.jsonl"), other / "arc_challenge.train.jsonl")
    assert sweep_fails([last(run), f"--tasks={other}", "--shots=2", "--seqs=2"], capsys,
                       monkeypatch) == (
        f"{other / 'arc_challenge.train.jsonl'}: 1 items besides one that "
        f"{other / 'arc_challenge.jsonl'} holds too, fewer than the 2 shots asked")


def test_a_folder_named_like_a_task_file_is_not_read(tmp_path):
    (tmp_path / "mmlu_more.jsonl").mkdir()
    shutil.copy(os.path.join(EVALS, "mmlu.jsonl"), tmp_path / "mmlu.jsonl")
    assert suites.task_files(str(tmp_path)) == [str(tmp_path / "mmlu.jsonl")]


# -----------------------------------------------------------------------------
# 2. requests longer than the model's window: cut as lm-eval cuts them, and said

def arc_item(stem, i):
    return {"question": {"stem": stem, "choices": [{"text": t, "label": k} for t, k in
                                                   zip(("a tree", "the sea", "a stone"), "ABC")]},
            "answerKey": "ABC"[i % 3]}


def test_requests_longer_than_the_window_are_counted_in_one_warning(run, tmp_path, capsys):
    words = "the quick brown fox jumps over the lazy dog near the old mill".split()
    stems = [" ".join(words[j % len(words)] for j in range(n)) + "?" for n in range(2, 80)]
    folder = tmp_path / "long"
    folder.mkdir()
    path = folder / "arc_easy_long.jsonl"
    path.write_text("".join(json.dumps(arc_item(s, i)) + "\n" for i, s in enumerate(stems)))
    # by hand: lm-eval's ARC prompt, " " + the answer, as the tokenizer encodes the whole; the
    # model reads all of it but the last token
    model, _, enc, _ = ev.load(last(run))
    window = model.cfg.max_seq_len
    lengths = [len(enc.bos_ids) + len(enc.encode_ordinary(f"Question: {s}\nAnswer: {t}"))
               for s in stems for t in ("a tree", "the sea", "a stone")]
    want = sum(n - 1 > window for n in lengths)
    # cut and whole ones, and one at the edge: window + 1 tokens, the last one only predicted
    assert window == 64 and 0 < want < len(lengths) and window + 1 in lengths
    capsys.readouterr()
    ev.main([str(run), f"--tasks={folder}", "--seqs=2"])  # two checkpoints: one warning
    assert warnings(capsys) == [f"warning: arc_easy_long.jsonl: {want} of {len(lengths)} requests "
                                "are longer than the model's 64-token window: cut from the left, "
                                "as lm-eval cuts them"]
    # a shot longer than the window by itself: every request is cut, and fewer shots are the cure
    long_stem = " ".join(words * 8) + "?"
    assert len(enc.encode_ordinary(f"Question: {long_stem}")) > window
    (folder / "arc_easy_long.train.jsonl").write_text(json.dumps(arc_item(long_stem, 0)) + "\n")
    ev.main([str(run), f"--tasks={folder}", "--shots=1", "--seqs=2"])
    assert warnings(capsys) == [f"warning: arc_easy_long.jsonl: {len(lengths)} of {len(lengths)} "
                                "requests are longer than the model's 64-token window: cut from "
                                "the left, as lm-eval cuts them (fewer --shots keeps them whole)"]


def test_a_request_keeps_its_last_window_of_tokens_as_in_lm_eval(run, capsys):
    model = ev.load(last(run))[0]
    L, g = model.cfg.max_seq_len, torch.Generator().manual_seed(0)

    def request(total, cont=3):
        ids = torch.randint(1, model.cfg.vocab_size, (total,), generator=g).tolist()
        return ids[:-cont], ids[-cont:]
    requests = [request(n) for n in (L, L + 1, L + 2, 3 * L)]  # read whole, whole, cut, cut
    capsys.readouterr()
    got = tasks.loglikelihoods(model, requests, desc="edge")
    assert capsys.readouterr().err == (f"warning: edge: 2 of 4 requests are longer than the "
                                       f"model's {L}-token window: cut from the left, as lm-eval "
                                       "cuts them\n")
    for (ctx, cont), value in zip(requests, got):
        # lm-eval 0.4's HFLM: inp = (context_enc + continuation_enc)[-(max_length + 1):][:-1]
        inp = (ctx + cont)[-(L + 1):][:-1]
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([inp]))[0].double(), -1)
        want = logp[len(inp) - len(cont):].gather(1, torch.tensor(cont)[:, None]).sum().item()
        assert value == pytest.approx(want, abs=1e-5)


def test_a_suite_runs_a_seeds_tasks_at_its_shots_beside_its_published_figures(run, tmp_path, capsys):
    folder, out = tmp_path / "evals", tmp_path / "run"
    shutil.copytree(EVALS, folder)
    shutil.copytree(run, out)  # a sweep writes its table into the run
    capsys.readouterr()
    rows = ev.sweep(str(out / "ckpt_0000002"), f"amber:{folder}", seqs=2)
    said, row, suite = capsys.readouterr().out, rows[-1], suites.SUITES["amber"]
    assert set(row["tasks"]) == set(suite["tasks"])  # the suite's tasks alone
    for task, (metric, shots, figure) in suite["tasks"].items():
        # data/evals has no few-shot files: 0 shots, and the line says at how many the figure is
        ran = tasks.shots_of(str(folder / f"{task}.jsonl"))
        note = "" if ran == shots else f"  (published at {shots} shots)"
        assert row["tasks"][task] == ran
        assert (f"{task:16s} {ran:>5} {metric:20s} {100 * row[f'{task}/{metric}']:7.2f} {figure:9.2f}{note}\n"
                in said), said
    assert "ckpt_0000002 beside the published figures:" in said and f"published: {suite['source']}" in said
    os.remove(folder / "winogrande.jsonl")  # a folder without one of its tasks: said in one line
    with pytest.raises(suites.ConfigError, match=rf"^--tasks=amber: {folder} lacks winogrande \(data/evals/README.md"):
        ev.sweep(str(out / "ckpt_0000002"), f"amber:{folder}", seqs=2)
