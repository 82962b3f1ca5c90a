"""Scoring with an item's context read once (tasks.loglikelihoods: the context, then each answer
seeing the context and itself): every request's log-likelihood equals the layout of lm-eval (one
row per context + continuation, kept here as the reference, as it was) within 1e-5 nats in
float32 on CPU, and a plain float64 forward per request, for every task format at 0 and 1 shots,
with requests cut at the window, WinoGrande's partial scoring (different contexts, one
continuation), continuations whose first token merges with the context's end, and rows wider
than the window (the answers' positions are each their own)."""
import os, shutil

import pytest
import torch
import torch.nn.functional as F

import parallel
import tasks
from config import ModelConfig
from helpers import ROOT

EVALS = os.path.join(ROOT, "data", "evals")


@torch.no_grad()
def today(model, requests, batch_size=16, max_tokens=32768):
    """tasks.loglikelihoods as it was before the shared context (its warning left out)."""
    limit = model.cfg.max_seq_len
    rows = {}
    for i, (ctx, cont) in enumerate(requests):
        ids = (ctx + cont)[-(limit + 1):]
        rows.setdefault(tuple(ids[:-1]), []).append((i, cont))
    order = sorted(rows, key=len, reverse=True)
    out = [0.0] * len(requests)
    batches, start = [], 0
    while start < len(order):
        n = max(1, min(batch_size, max_tokens // len(order[start])))
        batches.append(order[start:start + n])
        start += n
    for batch in batches:
        T = len(batch[0])
        x = torch.zeros(len(batch), T, dtype=torch.long)
        for r, ids in enumerate(batch):
            x[r, :len(ids)] = torch.tensor(ids)
        logits = model(x)
        for r, ids in enumerate(batch):
            for i, cont in rows[ids]:
                pos = torch.arange(max(0, len(ids) - len(cont)), len(ids))
                logp = F.log_softmax(logits[r, pos].double(), -1)
                out[i] = logp.gather(1, torch.tensor(cont[-len(pos):])[:, None]).sum().item()
    return out


@torch.no_grad()
def plain(model64, ctx, cont):
    """One float64 forward of the request alone (cut as lm-eval cuts it): (ll, is_greedy)."""
    ids = (ctx + cont)[-(model64.cfg.max_seq_len + 1):]
    logp = F.log_softmax(model64(torch.tensor([ids[:-1]])).double(), -1)[0]
    lp = logp[len(ids) - 1 - len(cont):]
    return lp.gather(1, torch.tensor(cont)[:, None]).sum().item(), bool(
        (lp.argmax(-1) == torch.tensor(cont)).all())


def model_of(enc, window):
    torch.manual_seed(0)
    model = parallel.build_model(ModelConfig(vocab_size=enc.n_vocab, n_layer=2, d_model=32,
                                             n_head=2, ffn_hidden=64, max_seq_len=window),
                                 "cpu", 0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # sharp predictions: differences would show
    return model


def task_requests(enc, tmp_path, task, shots):
    path = str(tmp_path / f"{task}.jsonl")
    shutil.copy(os.path.join(EVALS, f"{task}.jsonl"), path)
    shutil.copy(path, tasks.shots_file(path))
    items, prompts = tasks.task_prompts(path, shots)
    return [tasks.encode_pair(enc, *r) for p, item in zip(prompts, items)
            for r in tasks.requests_of(p, item)]


def count_read(monkeypatch, model):
    """The tokens each forward of model reads (padding included): [(rows, width)]."""
    calls, real = [], model.forward

    def spy(x, *a, **k):
        calls.append(tuple(x.shape))
        return real(x, *a, **k)
    monkeypatch.setattr(model, "forward", spy)
    return calls


@pytest.mark.parametrize("window", [1024, 96])
@pytest.mark.parametrize("shots", [0, 1])
def test_every_task_equals_today_s_path(window, shots, enc, tmp_path, monkeypatch):
    model = model_of(enc, window)
    model64 = model_of(enc, window).double()
    cut_seen = 0
    for task in tasks.TASKS:
        reqs = task_requests(enc, tmp_path, task, shots)
        calls = count_read(monkeypatch, model)
        got = tasks.loglikelihoods(model, reqs, batch_size=3, desc=task)
        shared = sum(b * t for b, t in calls)
        calls.clear()
        alone = tasks.loglikelihoods(model, reqs, batch_size=3, desc=task, share_context=False)
        unshared = sum(b * t for b, t in calls)
        want = today(model, reqs, batch_size=3)
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5, task
        assert max(abs(a - b) for a, b in zip(alone, want)) < 1e-5, task
        for (ctx, cont), value in zip(reqs, got):
            assert value == pytest.approx(plain(model64, ctx, cont)[0], abs=1e-5), task
        cut = [len(c) + len(x) - 1 > window for c, x in reqs]
        cut_seen += sum(cut)
        # an item's answers after one context read fewer tokens than a row each; WinoGrande's
        # options are each a context of their own, and the cut requests have contexts of their
        # own (but one-token answers: MMLU's letters); CrowS-Pairs' sentences share one token
        if task == "winogrande":
            assert shared == unshared, task
        elif any(cut) or task in tasks.PAIRS:
            assert shared <= unshared, task
        else:
            assert shared < 0.8 * unshared, task
    if window == 96 and shots:
        assert cut_seen > 0


def test_a_continuation_merging_with_the_context_s_end(enc, tmp_path):
    """Contexts cut mid-word: encode_pair's continuation is what the whole encoding adds, so the
    model reads context + a continuation that may start with a merged token; the shared context
    is those final tokens."""
    words = "the morning market opened slowly and the traders waited for news".split()
    reqs, merged = [], 0
    for k in range(1, len(words)):
        text = " ".join(words[:k]) + " " + words[k]
        for cut in range(1, len(words[k])):
            ctx_text, rest = text[:len(text) - len(words[k]) + cut], words[k][cut:]
            pairs = [tasks.encode_pair(enc, ctx_text, rest + end)
                     for end in (" and more", " then", "ly so", "")]
            pairs = [(c, x) for c, x in pairs if x]
            whole = enc.encode_ordinary(ctx_text + rest)
            merged += whole[:len(pairs[0][0])] != pairs[0][0]
            reqs += pairs
    assert merged > 0  # the test has boundaries where the tokens merge
    model, model64 = model_of(enc, 1024), model_of(enc, 1024).double()
    got = tasks.loglikelihoods(model, reqs, batch_size=4)
    want = today(model, reqs, batch_size=4)
    assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5
    for (ctx, cont), value in zip(reqs, got):
        assert value == pytest.approx(plain(model64, ctx, cont)[0], abs=1e-5)


def test_batches_on_the_shared_context_and_small_token_budgets(enc):
    """Many continuations of one context, split into batches (batch_size, max_tokens), some one
    token long, next to requests of other contexts, ones cut at the window, an empty one and ones
    longer than the window."""
    g = torch.Generator().manual_seed(0)
    model = model_of(enc, 64)

    def ids(n):
        return torch.randint(1, enc.n_vocab, (n,), generator=g).tolist()
    ctx = ids(40)
    reqs = [(ctx, ids(n)) for n in (1, 5, 2, 9, 1, 3, 7, 4, 6, 2, 8)]
    reqs += [(ids(10), ids(3)), (ctx, ids(30)), (ids(70), ids(4)), (ctx[:39], ids(5))]
    # an empty continuation (log P = 0), and one longer than the window (its last 64 tokens)
    reqs += [(ctx, []), (ids(3), ids(80)), (ctx, ids(70))]
    for bs, mt in [(16, 32768), (3, 32768), (2, 50), (1, 1)]:
        got = tasks.loglikelihoods(model, reqs, batch_size=bs, max_tokens=mt)
        want = today(model, reqs, batch_size=bs, max_tokens=mt)
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-5, (bs, mt)


def test_greedy_choice_and_scores_of_a_task_are_unchanged(enc, tmp_path):
    """run_task's numbers (acc, acc_norm, their standard errors) with the shared context are
    today's."""
    model = model_of(enc, 1024)
    for task in ("hellaswag", "arc_easy", "mmlu", "truthfulqa_mc2", "winogrande"):
        path = str(tmp_path / f"{task}.jsonl")
        shutil.copy(os.path.join(EVALS, f"{task}.jsonl"), path)
        shutil.copy(path, tasks.shots_file(path))
        got = tasks.run_task(model, enc, path, shots=1, batch_size=3)
        real = tasks.loglikelihoods
        try:
            tasks.loglikelihoods = lambda m, r, bs, **k: today(m, r, bs)
            want = tasks.run_task(model, enc, path, shots=1, batch_size=3)
        finally:
            tasks.loglikelihoods = real
        assert got.keys() == want.keys()
        for k in got:
            assert got[k] == pytest.approx(want[k], abs=1e-9, nan_ok=True), (task, k)


def test_the_model_s_mask_and_positions(enc):
    """model.GPT.forward: a (B, T, T) boolean mask is the attention itself (doc_ids' runs, said
    as booleans, give the same logits), at= gives those positions' logits alone, and pos lets a
    row be wider than the window where no position passes it."""
    model = model_of(enc, 16)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(1, enc.n_vocab, (3, 16), generator=g)
    docs = torch.tensor([[0] * 5 + [1] * 11, [0] * 16, [2] * 9 + [3] * 7])
    mask = torch.ones(16, 16, dtype=torch.bool).tril() & (docs[:, None, :] == docs[:, :, None])
    with torch.no_grad():
        want = model(x, doc_ids=docs)
        assert torch.allclose(model(x, doc_ids=mask), want, atol=1e-5)
        at = torch.rand(3, 16, generator=g) < 0.3
        assert torch.allclose(model(x, doc_ids=mask, at=at), want[at], atol=1e-5)
        # 24 tokens in a 16-token window: 8 positions 0..7 twice, each half seeing itself
        y = torch.cat([x[:1, :8], x[1:2, :8], x[2:, :8]], 1)
        half = torch.tensor([0] * 8 + [1] * 8 + [2] * 8)
        m = torch.ones(24, 24, dtype=torch.bool).tril() & (half[None, :] == half[:, None])
        out = model(y, doc_ids=m[None], pos=torch.arange(24)[None] % 8)
        for k in range(3):
            assert torch.allclose(out[0, 8 * k:8 * k + 8], model(x[k:k + 1, :8])[0], atol=1e-5)
        with pytest.raises(ValueError, match="longer than max_seq_len=16"):
            model(y)
