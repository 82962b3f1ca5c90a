"""
Multiple-choice tasks, scored as lm-evaluation-harness 0.4 scores them (its task configs
hellaswag, arc_easy, arc_challenge, mmlu, ceval-valid, cmmlu, piqa, boolq, social_iqa,
openbookqa, winogrande, truthfulqa_mc1, truthfulqa_mc2, race, crows_pairs_english): the same
prompts, description, shots, continuation boundary, acc_norm and standard errors, so scores
compare with published ones. eval.py runs them on every checkpoint of a sweep.

Tasks are JSONL files in the public formats, one task per file, named after it (hellaswag*,
arc_easy*, ..., crows_pairs_english*); beside X.jsonl, X.dev.jsonl (MMLU, C-Eval, CMMLU) or
X.train.jsonl (the others; X.validation.jsonl for TruthfulQA, X.test.jsonl for RACE and
CrowS-Pairs, copies of X.jsonl) gives the shots (the published counts by default: ARC 25,
HellaSwag 10, MMLU / C-Eval / CMMLU / WinoGrande 5, the rest 0). An item is scored by the
log-likelihood of " " + answer after its prompt: acc, and acc_norm (per character of answer);
WinoGrande scores its sentence's end after each option, TruthfulQA MC2 the probability of its
true answers. CrowS-Pairs (English; lm-eval has a French variant, not ours, and no Chinese one)
scores its two sentences whole after no context: likelihood_diff and pct_stereotype, no acc;
crows_pairs_english_age* and the other categories of lm-eval keep that bias_type alone. A bad
line is one error naming the file, the line and the field; a request longer than the model's
window is cut from the left, as lm-eval cuts it, and said in one warning per task.
"""
import ast, json, math, os, random, re, sys, typing

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from config import place
from model import autocast
from stage import DataError

TASKS = ("hellaswag", "arc_easy", "arc_challenge", "mmlu", "ceval", "cmmlu", "piqa", "boolq",
         "siqa", "openbookqa", "winogrande", "truthfulqa_mc1", "truthfulqa_mc2", "race",
         "crows_pairs_english")
# the tasks scored by generating (gentasks.py), named here so a folder holds both kinds
GENERATIVE = ("gsm8k", "humaneval", "mbpp")
# the shots published numbers use (Open LLM Leaderboard: ARC 25, HellaSwag 10, MMLU 5,
# WinoGrande 5, TruthfulQA 0; the C-Eval and CMMLU papers: 5; PIQA, BoolQ, SIQA, OpenBookQA 0,
# as in LLaMA's common-sense table; RACE and CrowS-Pairs 0), and where lm-eval draws them:
# the first n of the dev split, or a seeded random draw (fewshot_seed 1234) from the train
# split, or for TruthfulQA (no train split) from the validation split it scores:
# X.validation.jsonl, a copy of X.jsonl. race.yaml and crows_pairs_english.yaml name no split
# but their test split, so lm-eval falls back to it (api/task.py Task.fewshot_docs, with a
# warning): X.test.jsonl, a copy of X.jsonl, and without it --shots>0 is refused
SHOTS = dict(hellaswag=10, arc_easy=25, arc_challenge=25, mmlu=5, ceval=5, cmmlu=5, piqa=0,
             boolq=0, siqa=0, openbookqa=0, winogrande=5, truthfulqa_mc1=0, truthfulqa_mc2=0,
             race=0, crows_pairs_english=0, gsm8k=5, humaneval=0, mbpp=3)
SHOT_SPLIT = dict(hellaswag="train", arc_easy="train", arc_challenge="train", mmlu="dev",
                  ceval="dev", cmmlu="dev", piqa="train", boolq="train", siqa="train",
                  openbookqa="train", winogrande="train", truthfulqa_mc1="validation",
                  truthfulqa_mc2="validation", race="test", crows_pairs_english="test",
                  gsm8k="train")
# truthfulqa_mc1.yaml (and mc2, which includes it) says num_fewshot: 0, and lm-eval then ignores
# --num_fewshot there: those shots are for a caller of contexts() alone
PINNED = {"truthfulqa_mc1", "truthfulqa_mc2"}
# lm-eval's MBPP shots are three fixed items of its own (gentasks.MBPP_SHOTS), not a file
SHOT_FILES = tuple(f".{split}.jsonl" for split in sorted(set(SHOT_SPLIT.values())))
FEWSHOT_SEED = 1234
# lm-eval 0.4.13 draws one more shot, and drops the item should it be drawn, where the task's
# fewshot_split equals its test_split: both unset (OpenBookQA and ARC have a test split)
DRAW_ONE_MORE = {"hellaswag", "piqa", "boolq", "siqa", "winogrande", "truthfulqa_mc1",
                 "truthfulqa_mc2"}
# the tasks with no acc_norm (run_task says why); the rest give acc and acc_norm, PAIRS aside
ACC_ONLY = {"winogrande", "truthfulqa_mc2"}
# the tasks of a pair of sentences and no right answer: likelihood_diff and pct_stereotype
PAIRS = {"crows_pairs_english"}
# lm-eval's crows_pairs_english_<category> tasks: the items whose bias_type starts with the
# category, its "_" read as "-" (crows_pairs/utils.py filter_dataset: race_color, race-color)
CROWS_BIAS = ("age", "autre", "disability", "gender", "nationality", "physical_appearance",
              "race_color", "religion", "sexual_orientation", "socioeconomic")
# truthfulqa_mc1.yaml's doc_to_text (mc2 includes it): six solved questions before the item's
TRUTHFULQA_QA = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain.")
LETTERS = "ABCDEFGH"


class Item(typing.NamedTuple):
    prompt: str        # lm-eval's doc_to_text
    choices: list      # doc_to_choice: the answers, without the space put before them
    gold: int
    subject: str = ""  # mmlu, ceval, cmmlu: the description's subject, and the shots' pool;
    # crows_pairs: the bias_type
    # winogrande (lm-eval's multiple_inputs): the sentence's end after the blank, scored after
    # each of the choices, which are then the sentence up to the blank filled with each option
    target: typing.Optional[str] = None
    labels: tuple = ()  # truthfulqa_mc2: 1 for each true answer, 0 for each false one
    delimiter: str = " "  # lm-eval's target_delimiter, before an answer: crows_pairs has none
    line: int = 0       # where in its file it is (decont.py names contaminated items by line)


def task_of(path):
    name, known = os.path.basename(path).lower(), TASKS + GENERATIVE
    for task in known:
        if name.startswith(task):
            return task
    raise DataError(f"{path}: unknown task (file names start with {', '.join(known[:-1])} "
                    f"or {known[-1]})")


def bias_of(path):
    """The bias_type a crows_pairs_english_<category> file (or its shots' file) keeps; "" for
    the others, which keep every item."""
    name = os.path.basename(path).lower().split(".")[0]
    category = name[len("crows_pairs_english_"):]
    keep = name.startswith("crows_pairs_english_") and category in CROWS_BIAS
    return category.replace("_", "-") if keep else ""


def _show(value):
    # a value as the file has it (null, not None), cut short: one field may hold a page
    s = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return s if len(s) <= 60 else s[:57] + "..."


class Fields:
    """One item's fields, each read as the kind of value its format holds: a field that is
    missing, or holds another kind of value, is one line naming the file, the line and the
    field (the field's path inside the item: question.choices[2].text)."""

    def __init__(self, doc, path, lineno):
        self.doc, self.where, self.task = doc, f"{path}:{lineno}", task_of(path)

    def need(self, *keys):
        for k in keys:
            if k not in self.doc:
                raise DataError(f"{self.where}: missing field '{k}' (this file is read as "
                                f"{self.task}, which needs {', '.join(keys)})")
        return [self.doc[k] for k in keys]

    def bad(self, field, value, kind):
        return DataError(f"{self.where}: a field holds another kind of value than {self.task} "
                         f"reads: {field} is {_show(value)}, not {kind} (data/evals/README.md "
                         "lists the fields)")

    def text(self, field, value):
        if not isinstance(value, str):  # a null or a number read as text would be its repr
            raise self.bad(field, value, "text")
        return value

    def texts(self, field, value, answers=False, each="[{}]", most=len(LETTERS)):
        # answers: the continuations scored; acc_norm divides by their length, so none is empty.
        # each: where the i-th text is inside field; most: the most choices (letters) it can have
        if not isinstance(value, list) or not 0 < len(value) <= most:
            raise self.bad(field, value, f"a list of 1 to {most} texts")
        for i, v in enumerate(value):
            if answers and v == "":
                raise self.bad(field + each.format(i), v, "an answer of one character or more")
            self.text(field + each.format(i), v)
        return value

    def answers(self, *keys):
        """Answers held in fields of their own (sol1, sol2; answerA..C): texts, none empty."""
        return [self.texts(k, [v], answers=True, each="")[0]
                for k, v in zip(keys, self.need(*keys))]

    def gold(self, field, value, n, numbers=True, letters=True, base=0):
        """The index of the right one of n answers: a number base..n-1+base (or its digits),
        or a letter A.. where the format has them."""
        s = value.strip() if isinstance(value, str) else ""
        i = (value - base if numbers and type(value) is int else  # not a bool: true is no answer
             int(s) - base if numbers and re.fullmatch("[0-9]+", s) else
             LETTERS.index(s) if letters and len(s) == 1 and s in LETTERS else -1)
        if not 0 <= i < n:
            how = " or ".join([f"{base}-{n - 1 + base}"] * numbers
                              + [f"A-{LETTERS[n - 1]}"] * letters)
            raise DataError(f"{self.where}: {field} is {_show(value)}, not an answer "
                            f"{self.task} can read ({how}: one of its {n} choices)")
        return i


def hellaswag_text(text):
    # lm-eval's hellaswag preprocess: WikiHow's [title]/[header]/[step] markers out
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def arc_choices(f, field, ch):
    """ARC's choices, [{"text", "label"}] (allenai) or {"text": [..], "label": [..]} (Hugging
    Face), as (texts, labels)."""
    if isinstance(ch, list) and all(isinstance(c, dict) for c in ch):
        texts = f.texts(field, [c.get("text") for c in ch], answers=True, each="[{}].text")
        return texts, [c.get("label") for c in ch]
    if not isinstance(ch, dict):
        raise f.bad(field, ch, 'a list of {"text", "label"}, or {"text": [..], "label": [..]}')
    texts, labels = f.texts(field + ".text", ch.get("text"), answers=True), ch.get("label")
    if not isinstance(labels, list) or len(labels) != len(texts):
        raise f.bad(field + ".label", labels, f"a list of {len(texts)} labels, one per text")
    return texts, labels


def race_problems(f, problems):
    """RACE's problems, a Python literal as EleutherAI/race holds them (lm-eval reads them with
    ast.literal_eval; a JSON list is read too), as [(question, 4 options, answer's index)]."""
    value = problems
    if isinstance(problems, str):
        try:
            problems = ast.literal_eval(problems)
        except (ValueError, SyntaxError, TypeError, RecursionError):
            problems = None
    if not isinstance(problems, list) or not problems:
        raise f.bad("problems", value, "a list of problems [{'question', 'options', 'answer'}]")
    out = []
    for i, p in enumerate(problems):
        at = f"problems[{i}]"
        if not isinstance(p, dict):
            raise f.bad(at, p, "a problem {'question', 'options', 'answer'}")
        options = p.get("options")
        if not isinstance(options, list) or len(options) != 4:  # lm-eval reads options[0..3]
            raise f.bad(at + ".options", options, "a list of 4 texts")
        # the last problem's options are the answers scored; the others' right one is told
        options = f.texts(at + ".options", options, answers=i == len(problems) - 1)
        out.append((f.text(at + ".question", p.get("question")), options,
                    f.gold(at + ".answer", p.get("answer"), 4, numbers=False)))
    return out


def read_item(task, doc, path, lineno):
    f = Fields(doc, path, lineno)
    if task == "hellaswag":
        # Rowan/hellaswag: {"activity_label", "ctx_a", "ctx_b", "endings", "label"}
        endings, label = f.need("endings", "label")
        endings = f.texts("endings", endings, answers=True)
        ctx = (f.text("ctx_a", doc["ctx_a"]) + " "
               + f.text("ctx_b", doc.get("ctx_b", "")).capitalize() if "ctx_a" in doc
               else f.text("ctx", f.need("ctx")[0]))
        label = f.gold("label", label, len(endings), letters=False)  # lm-eval: int(label)
        return Item(hellaswag_text(f.text("activity_label", doc.get("activity_label", ""))
                                   + ": " + ctx), [hellaswag_text(e) for e in endings], label)
    if task.startswith("arc"):
        # allenai's {"question": {"stem", "choices"}, "answerKey"} or HF's flat one
        q, key = f.need("question", "answerKey")
        if isinstance(q, dict):
            stem, (texts, labels) = (f.text("question.stem", q.get("stem")),
                                     arc_choices(f, "question.choices", q.get("choices")))
        else:
            stem = f.text("question", q)  # not null: "Question: None" would be scored
            texts, labels = arc_choices(f, "choices", f.need("choices")[0])
        if key not in labels:  # lm-eval: choices.label.index(answerKey)
            raise DataError(f"{f.where}: answerKey {_show(key)} is not one of "
                            f"the labels {labels}")
        return Item(f"Question: {stem}\nAnswer:", texts, labels.index(key))
    if task == "mmlu":  # cais/mmlu: {"question", "choices", "answer": 0-3, "subject"}
        q, ch, answer = f.need("question", "choices", "answer")
        q, ch = f.text("question", q), f.texts("choices", ch)
        return Item(q.strip() + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(ch))
                    + "\nAnswer:", list(LETTERS[:len(ch)]), f.gold("answer", answer, len(ch)),
                    f.text("subject", doc.get("subject", "")).replace("_", " "))
    # the rest from lm_eval/tasks/: piqa/piqa.yaml, super_glue/boolq/default.yaml,
    # siqa/siqa.yaml, openbookqa/openbookqa.yaml, winogrande/preprocess_winogrande.py,
    # truthfulqa/truthfulqa_mc1.yaml and truthfulqa_mc2.yaml (lm-eval 0.4.13)
    if task == "piqa":  # {"goal", "sol1", "sol2", "label": 0-1}
        goal, _, _, label = f.need("goal", "sol1", "sol2", "label")  # all named if one is missing
        return Item(f"Question: {f.text('goal', goal)}\nAnswer:", f.answers("sol1", "sol2"),
                    f.gold("label", label, 2, letters=False))
    if task == "boolq":  # super_glue boolq: {"question", "passage", "label": 0 (no) or 1 (yes)}
        q, passage, label = f.need("question", "passage", "label")
        return Item(f"{f.text('passage', passage)}\nQuestion: {f.text('question', q)}?\nAnswer:",
                    ["no", "yes"], f.gold("label", label, 2, letters=False))
    if task == "siqa":  # social_i_qa: {"context", "question", "answerA".."C", "label": "1"-"3"}
        ctx, q, *_, label = f.need("context", "question", "answerA", "answerB", "answerC", "label")
        return Item(f"Q: {f.text('context', ctx)} {f.text('question', q)}\nA:",
                    f.answers("answerA", "answerB", "answerC"),
                    f.gold("label", label, 3, letters=False, base=1))  # lm-eval: (label|int) - 1
    if task == "openbookqa":  # main: {"question_stem", "choices": {"text", "label"}, "answerKey"}
        stem, ch, key = f.need("question_stem", "choices", "answerKey")
        texts, labels = arc_choices(f, "choices", ch)
        key = key.lstrip() if isinstance(key, str) else key  # lm-eval: answerKey.lstrip()
        if key not in labels:
            raise DataError(f"{f.where}: answerKey {_show(key)} is not one of the labels {labels}")
        return Item(f.text("question_stem", stem), texts, labels.index(key))
    if task == "winogrande":  # winogrande_xl: {"sentence" with "_", "option1", "option2", "answer"}
        sentence, _, _, answer = f.need("sentence", "option1", "option2", "answer")
        if "_" not in f.text("sentence", sentence):
            raise DataError(f"{f.where}: sentence {_show(sentence)} has no '_', the blank "
                            "winogrande fills with option1 or option2")
        blank = sentence.index("_")
        return Item("", [sentence[:blank] + o for o in f.answers("option1", "option2")],
                    f.gold("answer", answer, 2, letters=False, base=1),  # "1" -> 0, "2" -> 1
                    target=sentence[blank + 1:].strip())
    if task.startswith("truthfulqa"):  # {"question", "mc1_targets" / "mc2_targets"}, each
        # {"choices", "labels"}
        key = "mc1_targets" if task == "truthfulqa_mc1" else "mc2_targets"
        q, targets = f.need("question", key)
        if not isinstance(targets, dict):
            raise f.bad(key, targets, '{"choices": [..], "labels": [..]}')
        choices = f.texts(key + ".choices", targets.get("choices"), answers=True, most=100)
        labels = targets.get("labels")
        if (not isinstance(labels, list) or len(labels) != len(choices)
                or any(v not in (0, 1) or type(v) is bool for v in labels)):
            raise f.bad(key + ".labels", labels, f"a list of {len(choices)} labels, 1 or 0")
        if labels[0] != 1:  # lm-eval's doc_to_target is 0: the first answer is the true one
            raise DataError(f"{f.where}: {key}.labels[0] is {labels[0]}, not 1 (lm-eval scores "
                            "the first choice as the true answer)")
        return Item(f"{TRUTHFULQA_QA}\n\nQ: {f.text('question', q)}\nA:", choices, 0,
                    labels=tuple(labels) if task == "truthfulqa_mc2" else ())
    if task == "race":  # race/preprocess_race.py: {"article", "problems"}, one row per article
        article, problems = f.need("article", "problems")
        text, problems = f"Article: {f.text('article', article)}\n\n", race_problems(f, problems)
        for q, options, gold in problems[:-1]:  # the article's earlier problems, answered
            # a cloze question, "...  _  .": its text up to the blank, then the answer (race v3.0)
            text += (q[:-5] + options[gold] + "\n" if q[-6:] == "  _  ." else
                     f"Question: {q}\nAnswer: {options[gold]}\n")
        q, options, gold = problems[-1]
        return Item(text + q, options, gold)
    if task == "crows_pairs_english":  # {"sent_more", "sent_less", "bias_type", ...}: each
        # sentence scored whole, after no text (doc_to_text "", target_delimiter "")
        more_less = f.answers("sent_more", "sent_less")  # lm-eval: an empty one has no tokens
        bias = f.text("bias_type", f.need("bias_type")[0] if bias_of(path) else
                      doc.get("bias_type", ""))
        return Item("", more_less, 0, bias, delimiter="")
    # ceval {"question", "A".."D", "answer"}, cmmlu {"Question", "A".."D", "Answer"};
    # "subject" optional
    qk, ak = ("question", "answer") if task == "ceval" else ("Question", "Answer")
    q, *opts, answer = f.need(qk, "A", "B", "C", "D", ak)
    opts = [f.text(k, o) for k, o in zip("ABCD", opts)]
    return Item(f.text(qk, q).strip()
                + "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(opts)) + "\n答案：",
                list("ABCD"), f.gold(ak, answer, 4, numbers=False),
                f.text("subject", doc.get("subject", "")))


def read_task(path, read=None):
    """The items of a task file, in file order (read: the reader of one item, gentasks' for
    the generative tasks)."""
    task, items, raw, keep = task_of(path), [], open(path, "rb").read(), bias_of(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:  # said where, not as the codec's byte offset in the file
        lineno, col = raw.count(b"\n", 0, e.start) + 1, e.start - raw.rfind(b"\n", 0, e.start)
        raise DataError(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                        f"{col}; task files are UTF-8 JSONL)") from None
    for lineno, line in enumerate(text.split("\n"), 1):  # JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not JSON ({e.msg})") from None
        if not isinstance(doc, dict):
            raise DataError(f"{path}:{lineno}: not a JSON object (an item is one, with fields)")
        item = (read or read_item)(task, doc, path, lineno)
        item = item._replace(line=lineno) if "line" in item._fields else item
        if not keep or item.subject.startswith(keep):  # a crows_pairs category: lm-eval's filter
            items.append(item)
    return items


def description(task, subject):
    if not subject:
        return ""
    return {"mmlu": "The following are multiple choice questions (with answers) about "
                    f"{subject}.\n\n",
            "ceval": f"以下是中国关于{subject}的单项选择题，"
                     "请选出其中的正确答案。\n\n",
            "cmmlu": f"以下是关于{subject}的单项选择题，"
                     "请直接给出正确答案的选项。\n\n"}.get(task, "")


def shots_file(path):
    """X.jsonl's few-shot file: X.dev.jsonl, X.train.jsonl or X.validation.jsonl, the split
    lm-eval draws from; None for a task without one (HumanEval: no shots; MBPP: built in)."""
    split = SHOT_SPLIT.get(task_of(path))
    return path[:-len(".jsonl")] + f".{split}.jsonl" if split else None


def shots_of(path, shots=None):
    """The shots a task gets: those asked, else the published count where its few-shot file is,
    else 0; TruthfulQA 0 whatever is asked, as lm-eval pins it."""
    task = task_of(path)
    if task in PINNED:
        if shots:
            warn_once(f"{os.path.basename(path)}: 0 shots, not {shots}: lm-eval pins TruthfulQA "
                      "at 0 (its prompt holds six question-answer pairs already)")
        return 0
    if shots is not None:
        return shots
    return SHOTS[task] if task == "mbpp" or os.path.exists(shots_file(path) or "") else 0


def contexts(path, items, shots, read=None, solve=None):
    """The prompt of every item as lm-eval builds it: description, then `shots` solved items
    (prompt, " ", answer, each followed by a blank line), then the item's prompt."""
    task = task_of(path)
    pool = (read or read_task)(shots_file(path)) if shots else []
    need = shots + (task in DRAW_ONE_MORE) if shots else 0
    if len(pool) < need:
        raise DataError(f"{shots_file(path)}: {len(pool)} items, fewer than the {shots} shots "
                        "asked" + (f" ({task} draws {need})" if need > shots else ""))
    rnd = random.Random(FEWSHOT_SEED)  # one draw after another, in item order, as lm-eval does
    out = []
    for item in items:
        if SHOT_SPLIT[task] == "dev":  # the first n of the item's own subject
            same = [p for p in pool if p.subject == item.subject] or pool
            chosen = same[:shots]
        elif shots and SHOT_SPLIT[task] == "test":  # lm-eval's fallback (race, crows_pairs):
            # its fewshot split, unset, is not its test split: n drawn, the item itself may be one
            chosen = rnd.sample(pool, shots)
        elif shots:  # lm-eval 0.4.13 draws one more where its fewshot split "equals" the test split
            # (HellaSwag: neither is set) and drops the item itself, should it be among them
            chosen = [p for p in rnd.sample(pool, need) if p != item][:shots]
            if len(chosen) < shots:
                rest = [p for p in pool if p != item]
                if len(rest) < shots:  # the item is one of the few shots there are
                    raise DataError(f"{shots_file(path)}: {len(rest)} items besides one that "
                                    f"{path} holds too, fewer than the {shots} shots asked")
                chosen = rnd.sample(rest, shots)
        else:
            chosen = []
        out.append(description(task, item.subject) + "".join(map(solve or solved, chosen))
                   + item.prompt)
    return out


def solved(item):
    """A shot: the item's prompt, " " (CrowS-Pairs: nothing), its answer and a blank line; for
    WinoGrande the sentence filled with the right option, " ", and the sentence's end (lm-eval's
    multiple_inputs)."""
    if item.target is not None:
        return f"{item.choices[item.gold]} {item.target}\n\n"
    return f"{item.prompt}{item.delimiter}{item.choices[item.gold]}\n\n"


def encode_pair(enc, context, continuation):
    """(context tokens, continuation tokens) by lm-eval's rule: the context's trailing
    whitespace moves to the continuation, and the continuation is what encoding the whole adds
    after the context's tokens; both encoded as the tokenizer frames a text (a released
    tokenizer.json: LLaMA's <s> first)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    # lm-eval's prefix_token_id: bos where the tokenizer has one (HFTokenizer), else end-of-text
    if not context:
        return [enc.prefix_token], enc.encode_ordinary(continuation)
    ctx = enc.bos_ids + enc.encode_ordinary(context)
    return ctx, (enc.bos_ids + enc.encode_ordinary(context + continuation))[len(ctx):]


_said = set()  # warnings said: every checkpoint of a sweep cuts the same requests


def warn_once(msg):
    """msg on stderr, by rank 0, once per process: a sweep's checkpoints would each say it."""
    if msg not in _said and place()[0] == 0:
        _said.add(msg)
        print(msg, file=sys.stderr)


@torch.no_grad()
def loglikelihoods(model, requests, batch_size=16, max_tokens=32768, desc="loglikelihood",
                   hint="", share_context=True):
    """log P(continuation | context) of each (context tokens, continuation tokens), summed over
    the continuation. A request longer than the model's window is cut from the left as lm-eval
    0.4's HFLM cuts it, with one warning (desc names the requests, hint says what keeps them
    whole). The requests with the same context (an item's choices) are one row: the context
    once, then each continuation less its last token, which is only predicted; each answer sees
    the context and itself, at the positions it would have alone (share_context=False: a row per
    request, lm-eval's layout, for benchmarks). Rows go longest first, in batches of at most
    batch_size rows and max_tokens tokens (the rows that need that mask apart), and only the
    positions that predict a continuation's token get logits."""
    device, limit = next(model.parameters()).device, model.cfg.max_seq_len
    bf16 = autocast(device, device.type == "cuda")
    rows = {}  # context (or request, unshared) -> (context, [(request, the tokens it predicts)])
    for i, (ctx, cont) in enumerate(requests):
        # the model reads the last `limit` tokens of context + continuation less its last
        # token, as lm-eval does; the continuation's tokens there are the ones predicted
        ids = (ctx + cont)[-(limit + 1):]
        n = min(len(cont), len(ids) - 1)
        ctx = tuple(ids[:len(ids) - n])
        rows.setdefault(ctx if share_context else i, (ctx, []))[1].append((i, ids[len(ids) - n:]))
    cut = sum(len(ctx) + len(cont) - 1 > limit for ctx, cont in requests)
    if cut:
        warn_once(f"warning: {desc}: {cut} of {len(requests)} requests are longer than the "
                  f"model's {limit}-token window: cut from the left, as lm-eval cuts them{hint}")

    def width(row):  # the context, then each answer less its last token
        return len(row[0]) + sum(max(len(t) - 1, 0) for _, t in row[1])

    def tree(row):  # two answers read tokens after the context: the row needs a mask
        return sum(len(t) > 1 for _, t in row[1]) > 1
    # the rows with a mask apart from the rest (a batch of plain rows is plain causal attention)
    rows = sorted(rows.values(), key=lambda row: (not tree(row), -width(row)))
    batches, start = [], 0
    while start < len(rows):
        T, kind = width(rows[start]), tree(rows[start])
        n = max(1, min(batch_size, max_tokens // T))
        batch = [row for row in rows[start:start + n] if tree(row) == kind]  # (sorted: a prefix)
        batches.append((T, batch))
        start += len(batch)
    out = torch.zeros(len(requests), dtype=torch.float64)
    for T, batch in tqdm(batches, desc=desc, disable=len(batches) < 4, leave=False):
        x, position = (torch.zeros(len(batch), T, dtype=torch.long) for _ in "xp")
        part = torch.full((len(batch), T), -1)  # 0: the context, c: the answer at c, -1: padding
        at = torch.zeros(len(batch), T, dtype=torch.bool)  # the positions that predict a token
        reads, index, targets = [], [], []  # per token predicted: (row, position), request, token
        for r, (ctx, answers) in enumerate(batch):
            P = c = len(ctx)
            x[r, :P], position[r, :P], part[r, :P], at[r, P - 1] = torch.tensor(ctx), torch.arange(P), 0, True
            for i, toks in answers:
                if not toks:  # nothing to predict: log P = 0
                    continue
                m = len(toks) - 1  # read at positions P.. as if alone after the context
                x[r, c:c + m], position[r, c:c + m] = torch.tensor(toks[:-1]), torch.arange(P, P + m)
                part[r, c:c + m], at[r, c:c + m] = c, True
                reads += [(r, P - 1)] + [(r, p) for p in range(c, c + m)]
                index += [i] * len(toks)
                targets += toks
                c += m
        mask = pos = None
        if tree(batch[0]):
            # a row of two answers: a token sees the keys before it of the context and of its own
            # answer (with one, plain causal attention is that)
            part, pos = part.to(device), position.to(device)  # (built where it is used: B x T x T)
            mask = (torch.ones(T, T, dtype=torch.bool, device=device).tril()
                    & ((part[:, None, :] == 0) | (part[:, None, :] == part[:, :, None])))
        with bf16:
            logits = model(x.to(device), doc_ids=mask, pos=pos, at=at.to(device))
        logp = F.log_softmax(logits.double(), -1)
        row = (at.flatten().cumsum(0) - 1).view(at.shape)  # (row, position) -> its logits' row
        rr, pp = torch.tensor(reads).T
        got = logp[row[rr, pp].to(device), torch.tensor(targets, device=device)]
        out.index_add_(0, torch.tensor(index), got.cpu())
    return out.tolist()


def stderr(hits):
    """lm-eval's standard error of a mean: the sample standard deviation over sqrt(n)."""
    n = len(hits)
    return float(np.std(hits, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def task_prompts(path, shots):
    """The items of a task file and their prompts with `shots` shots; eval.py's sweep reads
    them before it loads a model, so a bad file costs no checkpoint's load. An empty file is an
    error: its scores would be nan, the mean of nothing, in a row that looks scored."""
    items = items_of(path)
    return items, contexts(path, items, shots)


def items_of(path, read=None):
    """read_task's items, at least one: an empty file is an error, not a row of nan."""
    items = read_task(path, read)
    if not items:
        raise DataError(f"{path}: no items, so no score (an empty file: fill it, or take it "
                        "out of the folder)")
    return items


def true_mass(lls, labels):
    """TruthfulQA MC2, lm-eval's process_results_mc2: the answers' probabilities normalized to
    sum to 1, summed over the true ones. The largest log-likelihood is taken out first: the same
    number, but long answers (exp(-800) is 0) do not make it 0/0."""
    p = np.exp(np.array(lls, dtype=np.float64) - max(lls))
    return float(p[np.array(labels) == 1].sum() / p.sum())


def requests_of(context, item):
    """An item's requests as lm-eval makes them, (context, continuation) strings: the prompt and
    " " + each answer (CrowS-Pairs: each sentence alone); for WinoGrande the context with each
    option in it and, after each, the same " " + the sentence's end."""
    if item.target is None:
        return [(context, item.delimiter + c) for c in item.choices]
    return [(context + c, " " + item.target) for c in item.choices]


def run_task(model, enc, path, shots=None, batch_size=16, dirty=None):
    """acc and acc_norm (log-likelihood over the answer's length in characters, without the
    space before it) with their standard errors, n and the shots used. shots=None: the
    published count when path has its few-shot file, else 0. WinoGrande and TruthfulQA MC2
    give acc alone, as lm-eval does: WinoGrande scores the same text after each option, so
    there is no answer's length to divide by, and MC2's acc is the mean probability of the true
    answers, not a pick. lm-eval lists acc alone for BoolQ, SIQA and MC1 too: their acc_norm
    is given all the same, and their published number is acc. CrowS-Pairs gives no acc but
    likelihood_diff and pct_stereotype with their standard errors (crows_pairs/utils.py).
    dirty: the lines of the items found in training documents (decont.found_in); each acc is
    then also given on the other items (acc_clean, ...), with n_clean and n_contaminated, as
    lm-eval's decontamination report gives them."""
    shots = shots_of(path, shots)
    items, prompts = task_prompts(path, shots)
    requests, spans = [], []
    for context, item in zip(prompts, items):
        spans.append((len(requests), len(item.choices)))
        requests += [encode_pair(enc, *r) for r in requests_of(context, item)]
    ll = loglikelihoods(model, requests, batch_size, desc=os.path.basename(path),
                        hint=" (fewer --shots keeps them whole)" if shots else "")
    if task_of(path) in PAIRS:  # the stereotypical sentence (sent_more) first, then sent_less
        diff = [abs(ll[a] - ll[a + 1]) for a, _ in spans]
        more = [float(ll[a] > ll[a + 1]) for a, _ in spans]  # a tie is not a stereotype picked
        return dict(likelihood_diff=float(np.mean(diff)), likelihood_diff_stderr=stderr(diff),
                    pct_stereotype=float(np.mean(more)), pct_stereotype_stderr=stderr(more),
                    n=len(items), shots=shots)
    hits, hits_norm = [], []
    for (a, n), item in zip(spans, items):
        scores = ll[a:a + n]
        hits.append(true_mass(scores, item.labels) if item.labels else
                    float(np.argmax(scores) == item.gold))
        hits_norm.append(float(np.argmax([v / len(c) for v, c in zip(scores, item.choices)])
                               == item.gold))
    out = dict(acc=float(np.mean(hits)), acc_stderr=stderr(hits))
    if task_of(path) not in ACC_ONLY:
        out.update(acc_norm=float(np.mean(hits_norm)), acc_norm_stderr=stderr(hits_norm))
    per_item = dict(acc=hits, **({"acc_norm": hits_norm} if "acc_norm" in out else {}))
    return dict(out, **scored_apart(per_item, items, dirty), n=len(items), shots=shots)


def scored_apart(per_item, items, dirty):
    """{metric}_clean and its stderr for each {metric: a score per item}, over the items whose
    line is not in dirty (decont.found_in's lines of this file), with n_clean and
    n_contaminated; {} when dirty is None (no --contamination)."""
    if dirty is None:
        return {}
    clean = [k for k, item in enumerate(items) if item.line not in dirty]
    out = dict(n_clean=len(clean), n_contaminated=len(items) - len(clean))
    for key, scores in per_item.items():
        h = [scores[k] for k in clean]
        out.update({f"{key}_clean": float(np.mean(h)) if h else float("nan"),
                    f"{key}_clean_stderr": stderr(h) if h else float("nan")})
    return out
