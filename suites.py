"""
The seeds' published tables as suites: `eval.py --tasks=amber|crystalcoder|neo` (or SUITE:FOLDER,
task files elsewhere than data/evals) scores a seed's tasks, with its shots and sampling, and
prints our figures beside the published ones, each with its source.
"""
import os

from config import ConfigError
from tasks import SHOT_FILES, task_of

# {task: (metric, shots, published figure in percent or None)}, where the figures come from, and
# the sampling of the code tasks ({task: dict(temperature, samples)}; greedy where absent)
SUITES = {
    "amber": dict(
        source="LLM360's Amber-7B model card: the Open LLM Leaderboard's lm-eval settings",
        tasks={"arc_challenge": ("acc_norm", 25, 42.57), "hellaswag": ("acc_norm", 10, 73.91),
               "mmlu": ("acc", 5, 28.53), "truthfulqa_mc2": ("acc", 0, 43.67),
               "winogrande": ("acc", 5, 64.35)}),
    # the card gives the five language tasks as a chart, not as numbers; its notes give the
    # Leaderboard's shots, and the temperatures of the code tasks (the samples drawn: not said)
    "crystalcoder": dict(
        source="LLM360's CrystalCoder model card (the five language figures are a chart there: "
               "'-'; HumanEval at temperature 0.2, MBPP at 0.1, pass@1 from 20 samples here)",
        tasks={"arc_challenge": ("acc_norm", 25, None), "hellaswag": ("acc_norm", 10, None),
               "mmlu": ("acc", 5, None), "truthfulqa_mc2": ("acc", 0, None),
               "winogrande": ("acc", 5, None), "humaneval": ("pass@1", 0, 28.38),
               "mbpp": ("pass@1", 3, 36.38)},
        sampling={"humaneval": dict(temperature=0.2, samples=20),
                  "mbpp": dict(temperature=0.1, samples=20)}),
    # MAP-Neo's paper measured with OpenCompass, whose shots and prompts are not in our
    # references: these are lm-eval's, so a gap of protocol is expected besides the model's
    "neo": dict(
        source="MAP-Neo-7B's paper (OpenCompass; scored here with lm-eval's shots and prompts)",
        tasks={"mmlu": ("acc", 5, 58.14), "ceval": ("acc", 5, 57.68), "cmmlu": ("acc", 5, 55.1),
               "gsm8k": ("exact_match_flexible", 5, 52.01),
               "hellaswag": ("acc_norm", 10, 70.74), "arc_challenge": ("acc_norm", 25, 68.14),
               "humaneval": ("pass@1", 0, 24.39), "mbpp": ("pass@1", 3, 27.0)}),
}


def suite_of(spec):
    """(the suite's name or None, the folder) of a --tasks value."""
    name, _, folder = spec.partition(":")
    if name in SUITES:
        return name, folder or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "data", "evals")
    return None, spec


def sampling_of(spec, task):
    """The suite's sampling of a task ({} where greedy, or no suite)."""
    suite = suite_of(spec)[0] if spec else None
    return SUITES[suite].get("sampling", {}).get(task, {}) if suite else {}
def task_files(tasks_dir):
    """The task files of a folder (not their few-shot files); of a suite (--tasks=amber), the
    files of its tasks, each of which must be there."""
    if not tasks_dir:
        return []
    suite, tasks_dir = suite_of(tasks_dir)
    if not os.path.isdir(tasks_dir):
        raise ConfigError(f"--tasks={tasks_dir}: no such folder")
    files = [os.path.join(tasks_dir, f) for f in sorted(os.listdir(tasks_dir))
             if f.endswith(".jsonl") and not f.endswith(SHOT_FILES)
             and os.path.isfile(os.path.join(tasks_dir, f))]
    if suite is None:
        return files
    want = SUITES[suite]["tasks"]
    missing = sorted(set(want) - {task_of(f) for f in files})
    if missing:
        raise ConfigError(f"--tasks={suite}: {tasks_dir} lacks {', '.join(missing)} "
                          "(data/evals/README.md says how to export each)")
    return [f for f in files if task_of(f) in want]


def suite_table(spec, row):
    """Lines comparing a sweep row with the suite's published figures (percent)."""
    suite = SUITES[suite_of(spec)[0]]
    lines = [f"{'task':16s} {'shots':>5s} {'metric':20s} {'ours':>7s} {'published':>9s}"]
    for task, (metric, shots, figure) in suite["tasks"].items():
        ours = row.get(f"{task}/{metric}")
        ran = row["tasks"].get(task)
        published = "-" if figure is None else f"{figure:.2f}"
        lines.append(f"{task:16s} {ran:>5} {metric:20s} "
                     f"{'' if ours is None else f'{100 * ours:.2f}':>7s} {published:>9s}"
                     + ("" if ran == shots else f"  (published at {shots} shots)"))
    return "\n".join(lines + [f"published: {suite['source']}"])
