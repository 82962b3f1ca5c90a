"""
Generative tasks, scored as lm-evaluation-harness 0.4.13 scores them (its task configs gsm8k,
humaneval and mbpp): the same prompts and shots, stop sequences and token budgets, answer
extraction and metrics, so scores compare with published ones. eval.py runs them beside the
multiple-choice tasks of tasks.py.

- GSM8K: greedy until "Question:"; exact match of the answer after lm-eval's two extractions,
  strict ("#### 42") and flexible (the last number of the text).
- HumanEval and MBPP: the completion runs with the task's tests, pass@1 greedy or, with
  samples n > 1 at a temperature, pass@k by the unbiased estimator. Generated code runs only
  when the user passes --confirm_run_unsafe_code, each program in sandbox.py's containment.

Task files are the Hugging Face datasets' splits as `datasets` exports them: gsm8k*.jsonl
{"question", "answer"} with gsm8k*.train.jsonl for its 5 shots; humaneval*.jsonl {"task_id",
"prompt", "test", "entry_point"}; mbpp*.jsonl {"task_id", "text", "code", "test_list"}, whose 3
shots are lm-eval's own (MBPP_SHOTS). Generation is batched through the model's KV cache
(model.GPT.stream), prompts left-padded, each row ending at end-of-text, at a stop sequence or
at the token budget, as lm-eval's Hugging Face backend ends them.
"""
import os, re, typing
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

import sandbox
from config import ConfigError
from model import autocast
from tasks import (Fields, contexts, items_of, read_task, scored_apart, shots_of, stderr,
                   task_of, warn_once)
from tokenizer import special_ids

# lm-eval's generation_kwargs: stop sequences (end-of-text is one too) and the most new tokens
# (its default, 256, where the task's yaml gives none)
UNTIL = dict(gsm8k=["Question:", "</s>", "<|im_end|>"],
             humaneval=["\nclass", "\ndef", "\n#", "\nif", "\nprint"], mbpp=["[DONE]"])
MAX_GEN_TOKS = dict(gsm8k=256, humaneval=1024, mbpp=256)
CODE = {"humaneval", "mbpp"}
CODE_TIMEOUT = 3.0  # seconds a program may run: evaluate's code_eval default, which lm-eval uses
# gsm8k.yaml: its filters (a regex, then the first response) and exact_match's settings
STRICT, FLEXIBLE = re.compile(r"#### (\-?[0-9\.\,]+)"), re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
# mbpp/utils.py list_fewshot_samples: MBPP's tasks 2, 3 and 4, the shots of every item
MBPP_SHOTS = [
    dict(text="Write a function to find the similar elements from the given two tuple lists.",
         code="def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & "
              "set(test_tup2))\r\n  return (res) ",
         test_list=["assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
                    "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
                    "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)"]),
    dict(text="Write a python function to identify non-prime numbers.",
         code="import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in "
              "range(2,int(math.sqrt(n)) + 1):\r\n        if n % i == 0:\r\n            result = "
              "True\r\n    return result",
         test_list=["assert is_not_prime(2) == False", "assert is_not_prime(10) == True",
                    "assert is_not_prime(35) == True"]),
    dict(text="Write a function to find the largest integers from a given list of numbers using "
              "heap queue algorithm.",
         code="import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = "
              "hq.nlargest(n, nums)\r\n  return largest_nums",
         test_list=["assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, "
                    "65] ",
                    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
                    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, "
                    "65, 58, 35]"])]


class GenItem(typing.NamedTuple):
    prompt: str       # lm-eval's doc_to_text
    answer: str       # a shot's answer: GSM8K's worked answer, MBPP's code; GSM8K's reference
    prefix: str = ""  # what the program puts before the completion (HumanEval: the prompt)
    tests: str = ""   # what it puts after it, on a line of its own: the task's tests
    subject: str = ""  # none: the shots' pool is the whole train file (tasks.contexts)
    line: int = 0      # where in its file it is (decont.py names contaminated items by line)


def mbpp_prompt(f, text, tests):
    # mbpp.yaml's doc_to_text, the first three tests shown (its template reads those three)
    tests = f.texts("test_list", tests, most=10 ** 6)
    if len(tests) < 3:
        raise f.bad("test_list", tests, "a list of 3 or more tests (the prompt shows three)")
    return (f"You are an expert Python programmer, and here is your task: {text} Your code "
            "should pass these tests:\n\n" + "\n".join(tests[:3]) + "\n[BEGIN]\n"), tests[:3]


def read_gen_item(task, doc, path, lineno):
    f = Fields(doc, path, lineno)
    if task == "gsm8k":  # openai/gsm8k main: {"question", "answer": "...#### 72"}
        q, answer = f.need("question", "answer")
        return GenItem(f"Question: {f.text('question', q)}\nAnswer:", f.text("answer", answer))
    if task == "humaneval":  # openai/openai_humaneval: the doc_to_target is test + check(entry)
        prompt, test, entry = f.need("prompt", "test", "entry_point")
        return GenItem(f.text("prompt", prompt), "", prompt,
                       f"{f.text('test', test)}\ncheck({f.text('entry_point', entry)})")
    # google-research-datasets/mbpp full: {"text", "code", "test_list"}; the program is the
    # completion and the three tests it was shown (doc_to_target)
    text, code, tests = f.need("text", "code", "test_list")
    prompt, shown = mbpp_prompt(f, f.text("text", text), tests)
    return GenItem(prompt, f.text("code", code), "", "\n".join(shown))


def read_gen_task(path):
    return read_task(path, read_gen_item)


def gen_prompts(path, shots):
    """The items of a generative task file and their prompts with `shots` shots: GSM8K's drawn
    from its train file as tasks.contexts draws them, MBPP's the first `shots` of lm-eval's
    three; HumanEval has none."""
    task, items = task_of(path), items_of(path, read_gen_item)
    if task == "gsm8k":  # a shot: prompt, " ", the worked answer, a blank line
        return items, contexts(path, items, shots, read_gen_task,
                               lambda s: f"{s.prompt} {s.answer}\n\n")
    most = len(MBPP_SHOTS) if task == "mbpp" else 0
    if shots > most:
        raise ConfigError(f"{path}: {shots} shots asked, and lm-eval's {task} has "
                          + (f"{most} (its fixed ones)" if most else "no few-shot split"))
    f = Fields({}, "mbpp's built-in shot", 0)  # lm-eval's shots: target_delimiter ""
    shot = "".join(mbpp_prompt(f, s["text"], s["test_list"])[0] + s["code"] + "\n[DONE]\n\n"
                   for s in MBPP_SHOTS[:shots])
    return items, [shot + item.prompt for item in items]


# -----------------------------------------------------------------------------
# generation: batched, through the KV cache, until a stop sequence

@torch.no_grad()
def generate_until(model, enc, prompts, until, max_gen_toks, temperature=0.0, top_p=1.0,
                   top_k=0, seeds=None, batch_size=16, desc="generate"):
    """lm-eval's generate_until: each prompt continued, greedy (temperature 0) or sampled, until
    end-of-text, one of the stop sequences `until`, or max_gen_toks new tokens; the text decoded
    without special tokens and cut before the first stop sequence. A prompt is framed as the
    tokenizer frames a text (LLaMA's <s> first) and keeps its last (window - max_gen_toks)
    tokens, as lm-eval cuts it. Longest first, batch_size rows at a time, left-padded (each row
    as if alone: model.GPT.stream). seeds: one per prompt when sampling, so a row's text depends
    on its seed, not on the rows batched with it."""
    device, window = next(model.parameters()).device, model.cfg.max_seq_len
    keep, special = window - max_gen_toks, special_ids(enc)
    ids = [enc.bos_ids + enc.encode_ordinary(p) for p in prompts]
    cut = sum(len(x) > keep for x in ids)
    if cut:
        warn_once(f"warning: {desc}: {cut} of {len(ids)} prompts are longer than the {keep} tokens "
             f"the model's {window}-token window leaves beside {max_gen_toks} new ones: their "
             "start is cut, as lm-eval cuts it")
    ids = [x[-keep:] for x in ids]
    stops = [s.encode() for s in until]
    longest = max(map(len, stops), default=0)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # the least padding
    bf16, out = autocast(device, device.type == "cuda"), [None] * len(ids)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False,
                      disable=len(order) <= batch_size):
        rows = order[start:start + batch_size]
        T = len(ids[rows[0]])
        pad = [T - len(ids[i]) for i in rows]
        x = torch.tensor([[0] * p + ids[i] for p, i in zip(pad, rows)], device=device)
        gens = None if temperature == 0 else [
            torch.Generator(device=device).manual_seed(seeds[i]) for i in rows]
        text, done = [b""] * len(rows), [False] * len(rows)
        with bf16:
            # the ids past the tokenizer's (the vocabulary's padding) are not masked: lm-eval's
            # backend draws them too, and decodes them as nothing
            for nxt in model.stream(x, max_gen_toks, temperature, top_k, top_p, gens, pad=pad):
                for r, t in enumerate(nxt[:, 0].tolist()):
                    if done[r]:
                        continue
                    if t == enc.eot_token:
                        done[r] = True
                    elif t not in special and t < enc.n_vocab:  # lm-eval: skip_special_tokens
                        piece = enc.decode_single_token_bytes(t)
                        text[r] += piece
                        # a stop sequence can only end in the bytes just added
                        done[r] = any(s in text[r][-(len(piece) + longest):] for s in stops)
                if all(done):
                    break
        for r, i in enumerate(rows):
            s = text[r].decode("utf-8", errors="replace")
            for stop in until:
                s = s.split(stop)[0]
            out[i] = s
    return out


# -----------------------------------------------------------------------------
# scoring: GSM8K's answers; the code tasks' programs, run contained

def extract(regex, text, group):
    """lm-eval's RegexFilter: the group-th match of regex in text (of a pattern with groups,
    its first non-empty group), stripped; "[invalid]" where none."""
    found = regex.findall(text)
    if not found:
        return "[invalid]"
    match = found[group]
    if isinstance(match, tuple):
        match = next((m for m in match if m), "[invalid]")
    return match.strip()


def normalized(text):
    # gsm8k.yaml's exact_match: regexes_to_ignore taken out in turn, then ignore_case
    for pattern in IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def run_programs(programs, workers=None, desc="run"):
    """sandbox.run_program's Result of each program, several at a time (each is a process)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        runs = pool.map(lambda p: sandbox.run_program(p, timeout=CODE_TIMEOUT), programs)
        return list(tqdm(runs, total=len(programs), desc=desc, leave=False,
                         disable=len(programs) < 16))


def check_generation(samples, temperature, max_gen_toks):
    """How a generative task is asked to generate, refused in one line where it cannot."""
    if type(samples) is not int or samples < 1:
        raise ConfigError(f"--samples={samples}: generations per item, 1 or more")
    if not temperature >= 0:  # nan too
        raise ConfigError(f"--temperature={temperature}: 0 (greedy) or more")
    if max_gen_toks is not None and (type(max_gen_toks) is not int or max_gen_toks < 1):
        raise ConfigError(f"--max_gen_toks={max_gen_toks}: new tokens at most, 1 or more")
    if samples > 1 and temperature == 0:
        raise ConfigError(f"--samples={samples} at temperature 0: greedy decoding gives one "
                          "text n times (give --temperature, e.g. 0.2 as CrystalCoder's HumanEval)")


def run_generative(model, enc, path, shots=None, unsafe=False, samples=1, temperature=0.0,
                   top_p=0.95, max_gen_toks=None, batch_size=16, seed=0, dirty=None):
    """A generative task's metrics, with their standard errors, n and the shots used. GSM8K:
    exact_match_strict and exact_match_flexible. HumanEval, MBPP (only with unsafe, the user's
    --confirm_run_unsafe_code): pass@1, and pass@k for k of 10 and 100 up to samples, each
    item's the unbiased estimate from its samples, averaged. samples > 1 needs a temperature;
    top_p applies to sampling alone, with transformers' default top_k of 50, as lm-eval's
    sampled runs (humaneval_64) draw. dirty: as run_task's (each metric also on the clean
    items)."""
    task, name = task_of(path), os.path.basename(path)
    if task in CODE and not unsafe:
        raise ConfigError(f"{path}: {task} runs the code the model writes: only with "
                          "--confirm_run_unsafe_code (each program then runs in sandbox.py's "
                          "containment: its own uid, limits, no network)")
    check_generation(samples, temperature, max_gen_toks)
    shots = shots_of(path, shots)
    items, prompts = gen_prompts(path, shots)
    window, limit = model.cfg.max_seq_len, max_gen_toks or MAX_GEN_TOKS[task]
    if limit >= window:  # lm-eval refuses this model; a toy model still gets a figure
        warn_once(f"warning: {name}: lm-eval generates up to {limit} tokens, and the model's window "
             f"is {window}: {window // 2} here (--max_gen_toks sets it), a figure outside "
             "lm-eval's protocol")
        limit = window // 2
    texts = generate_until(model, enc, [p for p in prompts for _ in range(samples)],
                           UNTIL[task], limit, temperature, top_p if temperature else 1.0,
                           50 if temperature else 0,
                           [seed * 1_000_003 + i for i in range(len(prompts) * samples)],
                           batch_size, desc=name)
    if task == "gsm8k":
        gold = [normalized(item.answer) for item in items]
        out, scores = {}, {}
        for metric, regex, group in (("strict", STRICT, 0), ("flexible", FLEXIBLE, -1)):
            hits = [float(normalized(extract(regex, t, group)) == g) for t, g in zip(texts, gold)]
            scores[f"exact_match_{metric}"] = hits
            out.update({f"exact_match_{metric}": float(np.mean(hits)),
                        f"exact_match_{metric}_stderr": stderr(hits)})
        return dict(out, **scored_apart(scores, items, dirty), n=len(items), shots=shots)
    programs = [f"{item.prefix}{text}\n{item.tests}"
                for item, text in zip([i for i in items for _ in range(samples)], texts)]
    passed = np.array([r.passed for r in run_programs(programs, desc=name + " (run)")])
    passed = passed.reshape(len(items), samples).sum(1)
    out, scores = {}, {}
    for k in [1] + [k for k in (10, 100) if k <= samples]:
        per_item = scores[f"pass@{k}"] = [sandbox.pass_at_k(samples, int(c), k) for c in passed]
        out.update({f"pass@{k}": float(np.mean(per_item)), f"pass@{k}_stderr": stderr(per_item)})
    return dict(out, **scored_apart(scores, items, dirty), n=len(items), shots=shots)

