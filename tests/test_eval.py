"""eval.py: bits per byte on a hand-checked case, every task format, memorization, the sweep,
sampling."""
import json, math, os

import numpy as np
import pytest
import torch

import data
import eval as ev
import train
from conftest import ROOT, small_args
from model import ModelConfig, sample_text


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
    manifest = data.load_manifest(cfg.data_dir, verify=False)
    tokens = nbytes = 0
    for source, seqs in data.val_sequences(cfg.data_dir, manifest, cfg.seq_len, 3).items():
        # the text's UTF-8 bytes: the end-of-text marker is not text
        text_bytes = sum(len(enc.decode_bytes(row)) - row.count(enc.eot_token) * len(b"<|endoftext|>")
                         for row in seqs[:, 1:].tolist())
        assert got[f"loss/{source}"] == pytest.approx(math.log(V), rel=1e-5)
        assert got[f"bpb/{source}"] == pytest.approx(seqs[:, 1:].size * math.log2(V) / text_bytes, rel=1e-5)
        tokens, nbytes = tokens + seqs[:, 1:].size, nbytes + text_bytes
    assert got["bpb/all"] == pytest.approx(tokens * math.log2(V) / nbytes, rel=1e-5)


class Oracle(torch.nn.Module):
    """A 'model' that puts nearly all probability on continuing one of the gold answers."""

    def __init__(self, golds, vocab):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=vocab, max_seq_len=4096)
        self.next = {tuple(g[:i + 1]): g[i + 1] for g in golds for i in range(len(g) - 1)}
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        logits = torch.zeros(*x.shape, self.cfg.vocab_size)
        for t in range(x.size(1)):
            nxt = self.next.get(tuple(x[0, :t + 1].tolist()))
            if nxt is not None:
                logits[0, t, nxt] = 30.0
        return logits


@pytest.mark.parametrize("task", ["hellaswag", "arc_easy", "arc_challenge", "mmlu", "ceval", "cmmlu"])
@pytest.mark.parametrize("shots", [0, 1])
def test_every_task_format_is_read_and_scored(task, shots, tiny_data):
    path = os.path.join(ROOT, "data", "evals", task + ".jsonl")
    items = ev.read_task(path)
    assert len(items) >= 2 and all(0 <= g < len(c) for _, c, g, _ in items)
    enc = data.tokenizer_of(tiny_data, data.load_manifest(tiny_data, verify=False))
    golds = []
    for i, (q, choices, g, _) in enumerate(items):
        context = "".join(items[j][3] + "\n\n" for j in [j for j in range(len(items)) if j != i][:shots]) + q
        golds.append(enc.encode_ordinary(context) + enc.encode_ordinary(choices[g]))
    right = ev.run_task(Oracle(golds, enc.n_vocab), enc, path, shots)
    assert right["acc"] == right["acc_norm"] == 1.0 and right["n"] == len(items)
    # no preference: each token costs ln V, so acc picks the answer of fewest tokens and acc_norm
    # the fewest tokens per character
    flat = ev.run_task(Oracle([], enc.n_vocab), enc, path, shots)
    ntok = [[len(enc.encode_ordinary(c)) for c in choices] for _, choices, _, _ in items]
    per_char = [[-n / len(c) for n, c in zip(ns, choices)] for ns, (_, choices, _, _) in zip(ntok, items)]
    assert flat["acc"] == np.mean([int(np.argmin(ns)) == g for ns, (_, _, g, _) in zip(ntok, items)])
    assert flat["acc_norm"] == np.mean([int(np.argmax(pc)) == g for pc, (_, _, g, _) in zip(per_char, items)])


def test_a_task_file_in_the_wrong_format_names_file_line_and_field(tmp_path):
    bad = tmp_path / "mmlu_bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}) + "\n"
                   + json.dumps({"question": "q", "options": ["a", "b"], "answer": 1}) + "\n")
    with pytest.raises(data.DataError, match=rf"{bad}:2: missing field 'choices' \(this file is read as mmlu"):
        ev.read_task(str(bad))
    with pytest.raises(data.DataError, match="unknown task"):
        ev.read_task(str(tmp_path / "trivia.jsonl"))


def test_memorization_of_an_overfit_sequence_and_of_random_text():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layer=2, d_model=64, n_head=4, ffn_hidden=128, max_seq_len=64)
    model = train.build_model(cfg, "cpu", 0)
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


def test_sweep_over_three_checkpoints_and_again(run3):
    rows = ev.sweep(str(run3), os.path.join(ROOT, "data", "evals"), shots=0, seqs=4)
    assert [r["step"] for r in rows] == [2, 4, 6]
    for r in rows:
        assert {"loss/all", "bpb/all", "mmlu/acc", "cmmlu/acc_norm", "mem/exact", "mem_heldout/frac"} <= set(r)
    assert len(open(run3 / "evals.csv").readlines()) == 4 and len(open(run3 / "evals.md").readlines()) == 5
    assert len(open(run3 / "evals.jsonl").readlines()) == 3
    ev.sweep(str(run3), os.path.join(ROOT, "data", "evals"), shots=0, seqs=4)  # evaluated already: skipped
    assert len(open(run3 / "evals.jsonl").readlines()) == 3


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


def test_init_from_weights_of_another_shape_is_a_config_error(tiny_data, tmp_path):
    torch.save({"model": {"embed.weight": torch.zeros(3, 3)}}, tmp_path / "w.pt")
    with pytest.raises(train.ConfigError, match=r"--init_from=.*w.pt does not fit this model config: .*embed.weight"):
        train.main(small_args(tiny_data, str(tmp_path / "out"), "--max_steps=1", "--warmup_steps=1", f"--init_from={tmp_path / 'w.pt'}"))


def test_eval_loss_is_the_runs_own_validation_loss_with_document_masking(tiny_data, tmp_path):
    # eval.py and training compute the loss one way (train.evaluate): with doc_mask the packed
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
