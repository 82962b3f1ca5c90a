"""eval.py export/import: our model -> Hugging Face Llama -> transformers gives our logits, and back
gives our weights; the tokenizer as tokenizer.json. transformers is a test-only dependency."""
import dataclasses, json, os, random

import numpy as np
import pytest
import torch

import data
import stage
import tasks
import tokenizer
import parallel
import train
from config import ModelConfig
import eval as hf
from helpers import ROOT, TINY, llama_tokenizer, load, tokenize_tiny

transformers = pytest.importorskip("transformers")


def make_model(seed=0, **kw):
    cfg = dict(vocab_size=512, n_layer=2, d_model=64, n_head=4, ffn_hidden=160, max_seq_len=64)
    model = parallel.build_model(ModelConfig(**{**cfg, **kw}), "cpu", seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # init leaves norms at 1 and biases at 0: perturb them so a mix-up shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


SHAPES = {
    "amber": dict(),  # MHA, head_dim = d_model / n_head, untied
    "neo": dict(head_dim=24, n_kv_head=2, rope_theta=5e5, norm_eps=1e-6),  # head_dim != d_model / n_head, GQA
    "tied": dict(tie_embeddings=True, n_kv_head=1),
    "biases": dict(qkv_bias=True, attn_out_bias=True, ffn_bias=True, n_kv_head=2),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_export_logits_and_import_roundtrip(shape, tmp_path):
    model = make_model(**SHAPES[shape])
    hf.export_llama(model, tmp_path)
    # dtype=, as torch_dtype= is deprecated in transformers 5
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(hf_model).__name__ == "LlamaForCausalLM"
    idx = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.max_seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(idx), hf_model(idx).logits
    assert (ours - theirs).abs().max() / ours.abs().max() < 1e-4
    assert_imports_back(model, tmp_path)


def assert_imports_back(model, path):
    sd, cfg = hf.import_llama(path)
    orig = model.state_dict()
    assert sorted(sd) == sorted(orig)
    for k in orig:
        assert torch.equal(sd[k], orig[k]), k
    assert cfg == model.cfg, [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(model.cfg, f.name)]


# what Llama cannot express goes out in nano360's layout: StableLm plus what it lacks, in our
# hf_modeling.py, which the folder carries as modeling_nano360.py (trust_remote_code=True)
CRYSTAL = dict(norm="layernorm", rotary_dim=4, qkv_bias=True, attn_out_bias=True, ffn_bias=True,  # head_dim 16
               tie_embeddings=True, embed_mult=14.6, logit_mult=2.22, qk_scale_by_d=True,
               hidden_lr_mult=0.0625, init_std=0.018, init_truncate=2.0)  # muP's training settings too
NANO360 = {
    "crystalcoder": CRYSTAL,
    "rmsnorm": dict(CRYSTAL, norm="rmsnorm", attn_out_bias=False, n_kv_head=2, tie_embeddings=False),
    # 44 * (30 / 44) < 30: the rotary fraction transformers reads must not lose a dim
    "rotary_30_of_44": dict(d_model=88, n_head=2, rotary_dim=30, qkv_bias=True),
}


@pytest.mark.parametrize("shape", NANO360)
def test_export_nano360_layout_logits_generate_and_import(shape, tmp_path):
    model = make_model(**NANO360[shape])
    with torch.no_grad():  # sharper attention than init's, so that a wrong score scale shows
        for block in model.blocks:
            block.attn.qkv.weight.mul_(4)
    hf.export_llama(model, tmp_path)
    assert (tmp_path / "modeling_nano360.py").read_bytes() == open(os.path.join(ROOT, "hf_modeling.py"), "rb").read()
    idx = torch.randint(0, model.cfg.vocab_size, (2, model.cfg.max_seq_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(idx)
    for impl in ("eager", "sdpa"):
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path, trust_remote_code=True, dtype=torch.float32, attn_implementation=impl).eval()
        assert type(hf_model).__name__ == "Nano360ForCausalLM"
        with torch.no_grad():
            theirs = hf_model(idx).logits
        assert (ours - theirs).abs().max() < 1e-5, impl
        # greedy decoding through transformers' KV cache: our tokens, and our logits at each step
        out = hf_model.generate(idx[:, :8], max_new_tokens=6, do_sample=False, output_logits=True,
                                return_dict_in_generate=True)
        assert torch.equal(out.sequences, model.generate(idx[:, :8], 6, temperature=0)), impl
        with torch.no_grad():
            steps = model(out.sequences)[:, 7:-1]
        assert (torch.stack(out.logits, 1) - steps).abs().max() < 1e-5, impl
    if model.cfg.qk_scale_by_d:  # the check can fail: StableLm's own 1/sqrt(head_dim) is far off
        for layer in hf_model.model.layers:
            layer.self_attn.scaling = model.cfg.head_dim ** -0.5
        with torch.no_grad():
            assert (ours - hf_model(idx).logits).abs().max() > 1e-3
    assert_imports_back(model, tmp_path)


def test_heads_not_dividing_d_model(tmp_path, capsys):
    # valid Llama (head_dim is explicit), which transformers 5 refuses to load: exported with a note
    model = make_model(d_model=60, n_head=8, head_dim=16, n_kv_head=2)
    hf.export_llama(model, tmp_path)
    assert "transformers 5 will not load" in capsys.readouterr().out
    sd, cfg = hf.import_llama(tmp_path)
    assert cfg == model.cfg and all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_import_sharded(tmp_path):
    from safetensors.torch import load_file, save_file
    model = make_model(**SHAPES["neo"])
    hf.export_llama(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    os.remove(tmp_path / "model.safetensors")
    names, weight_map = sorted(tensors), {}
    for i, part in enumerate([names[::2], names[1::2]]):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, tmp_path / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    json.dump(dict(metadata={}, weight_map=weight_map), open(tmp_path / "model.safetensors.index.json", "w"))
    sd, cfg = hf.import_llama(tmp_path)
    assert cfg == model.cfg and all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kw, key", [
    (dict(norm="layernorm"), "layernorm"),
    (dict(rotary_dim=8), "rotary_dim"),
    (dict(embed_mult=14.6), "embed_mult"),
    (dict(logit_mult=0.14), "logit_mult"),
    (dict(qk_scale_by_d=True), "qk_scale_by_d"),
    (dict(qkv_bias=True), "qkv_bias"),
    (dict(attn_out_bias=True), "attn_out_bias"),
])
def test_refused_where_neither_layout_fits(kw, key, tmp_path):
    # an explicit head_dim (MAP-Neo's) is Llama's alone: StableLm's is hidden_size / heads
    model = make_model(head_dim=24, **kw)
    with pytest.raises(ValueError, match=key) as e:
        hf.export_llama(model, tmp_path / "out")
    assert "head_dim=24" in str(e.value)
    assert not os.path.exists(tmp_path / "out")  # checked before anything is written


@pytest.mark.parametrize("change, key", [
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_scaling"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}), "rope_scaling"),
    (dict(model_type="mistral"), "model_type"),
])
def test_import_refuses(change, key, tmp_path):
    hf.export_llama(make_model(), tmp_path)
    c = json.load(open(tmp_path / "config.json"))
    json.dump({**c, **change}, open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError, match=key):
        hf.import_llama(tmp_path)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    texts = sum((load(n) for n in ("en", "zh", "code")), [])
    enc = tokenizer.train_bpe(texts, 512, str(d / "tok.tiktoken"))
    out = d / "hf"
    hf.export_llama(make_model(vocab_size=576), out, tokenizer_path=str(d / "tok.tiktoken"))
    return enc, out


def test_tokenizer_files(tokenizer_dir):
    enc, out = tokenizer_dir
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / f).exists(), f"{f} not written"
    c = json.load(open(out / "config.json"))
    assert c["eos_token_id"] == enc.eot_token == enc.encode_single_token("<|endoftext|>")
    assert c["pad_token_id"] == enc.encode_single_token("<|pad|>")


@pytest.mark.parametrize("source", ["en", "zh", "code"])
def test_tokenizer_matches_tiktoken(tokenizer_dir, source):
    enc, out = tokenizer_dir
    tok = transformers.AutoTokenizer.from_pretrained(out)
    texts = load(source) + ["don't  stop\r\n\n\t  x++ 12345 ünïcödé 🙂 中文，标点。", "   ", "a\n\n\nb"]
    rng = random.Random(source)  # random mixes of the characters the split pattern treats differently
    pool = list("aZé中文'sdtlLvV 123٣  \t\r\n\n.,;:!?-+*/(){}[]\"#@_~<>|\u00a0\u3000") + ["'ll", "'RE", "🙂"]
    texts += ["".join(rng.choices(pool, k=rng.randint(1, 40))) for _ in range(300)]
    ours = tokenizer.load_tokenizer(str(out))  # the same tokenizer.json, read as a released one is
    for text in texts:
        ids = enc.encode_ordinary(text)
        assert tok.encode(text) == ids, text[:80]
        assert tok.decode(ids) == text
        assert ours.encode_ordinary(text) == ids and ours.decode_bytes(ids) == text.encode()
    assert ours.encode_ordinary_batch(texts[:50]) == enc.encode_ordinary_batch(texts[:50])
    assert (ours.eot_token, ours.prefix_token, ours.n_vocab, ours.bos_ids) == (enc.eot_token, enc.eot_token, enc.n_vocab, [])
    # the specials are single tokens with tiktoken's ids
    for s in ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|pad|>"):
        assert tok.convert_tokens_to_ids(s) == enc.encode_single_token(s)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"


def test_tokenizer_vocab_too_big(tokenizer_dir, tmp_path):
    enc, out = tokenizer_dir
    tok_path = str(out.parent / "tok.tiktoken")
    with pytest.raises(ValueError, match="vocab_size"):
        hf.export_llama(make_model(vocab_size=512), tmp_path, tokenizer_path=tok_path)


# -----------------------------------------------------------------------------
# a released model's folder: a Llama tokenizer.json (SentencePiece-style BPE: "▁" for spaces,
# one prepended, <0xNN> byte fallback, <s> added by its post-processor), laid out as LLaMA's is

@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return llama_tokenizer(str(tmp_path_factory.mktemp("llama")))


def test_llama_tokenizer_json_matches_transformers(llama_dir):
    ours = tokenizer.load_tokenizer(llama_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(llama_dir)
    assert (ours.eot_token, ours.prefix_token) == (theirs.eos_token_id, theirs.bos_token_id) == (2, 1)
    assert ours.n_vocab == len(theirs)
    rng = random.Random(0)
    pool = list("aZé中文 ü\t\n\n.,:!?") + ["🙂", "  ", "ʕ•ᴥ•ʔ"]
    texts = sum((load(n) for n in ("en", "zh", "code")), []) + \
        ["".join(rng.choices(pool, k=rng.randint(1, 30))) for _ in range(200)]
    for text in texts:
        ids = ours.encode_ordinary(text)
        assert ids == theirs(text, add_special_tokens=False)["input_ids"], text[:80]
        assert ours.decode_bytes(ids) == text.encode(), text[:80]  # the prepended "▁" stripped again
    assert ours.encode_ordinary_batch(texts[:40]) == [ours.encode_ordinary(t) for t in texts[:40]]
    # characters the merges never saw fall back to their UTF-8 bytes, token by token
    ids = ours.encode_ordinary("ʕ")
    assert [ours.decode_single_token_bytes(i) for i in ids] == [b" ", *[bytes([b]) for b in "ʕ".encode()]]
    # special tokens in a text are text, as transformers' split_special_tokens=True encodes them
    split = transformers.AutoTokenizer.from_pretrained(llama_dir, split_special_tokens=True)
    assert ours.encode_ordinary("a </s> b") == split("a </s> b", add_special_tokens=False)["input_ids"]
    assert 2 not in ours.encode_ordinary("a </s> b")


def test_tokenizer_json_errors(llama_dir, tmp_path):
    with pytest.raises(stage.DataError, match="no tokenizer.json"):
        tokenizer.load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": [1]}}')
    with pytest.raises(stage.DataError, match="tokenizer.json: not a tokenizer.json"):
        tokenizer.load_tokenizer(str(tmp_path / "tokenizer.json"))
    spec = json.load(open(os.path.join(llama_dir, "tokenizer.json")))
    spec["added_tokens"] = spec["added_tokens"][:1]
    del spec["model"]["vocab"]["</s>"], spec["model"]["vocab"]["<s>"]
    json.dump(spec, open(tmp_path / "tokenizer.json", "w"))
    with pytest.raises(stage.DataError, match="cannot tell its end-of-text token"):
        tokenizer.load_tokenizer(str(tmp_path))
    json.dump(dict(eos_token="<|im_end|>"), open(tmp_path / "tokenizer_config.json", "w"))
    with pytest.raises(stage.DataError, match="eos_token '<|im_end|>' is not a token"):
        tokenizer.load_tokenizer(str(tmp_path))


def lm_eval_scores(model_dir, tok_dir, path):
    """(acc, acc_norm, log-likelihoods) of a task file by transformers' model and tokenizer, as
    lm-eval 0.4 computes them (whitespace moved, whole minus context, per-character norm)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    enc = lambda s: tok(s)["input_ids"]  # lm-eval 0.4.13: the tokenizer's own framing (LLaMA's <s> first)
    items = tasks.read_task(path)
    hits, hits_norm, lls = [], [], []
    for context, item in zip(tasks.contexts(path, items, 0), items):
        scores = []
        for c in item.choices:
            ctx, cont = context, " " + c
            n = len(ctx) - len(ctx.rstrip())
            ctx, cont = ctx[:len(ctx) - n], ctx[len(ctx) - n:] + cont
            whole, head = enc(ctx + cont), enc(ctx)
            ids = torch.tensor([whole])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            scores.append(sum(logp[i - 1, whole[i]].item() for i in range(len(head), len(whole))))
        lls += scores
        hits.append(int(np.argmax(scores)) == item.gold)
        hits_norm.append(int(np.argmax([v / len(c) for v, c in zip(scores, item.choices)])) == item.gold)
    return float(np.mean(hits)), float(np.mean(hits_norm)), lls


def test_eval_released_model_folders_end_to_end(llama_dir, tmp_path):
    # a released model's intermediate checkpoints: folders named by step, one tokenizer.json above them
    root = tmp_path / "amber"
    llama_tokenizer(str(root))
    for step, seed in ((0, 3), (120, 4)):
        hf.export_llama(make_model(seed, vocab_size=1024, max_seq_len=512), root / f"ckpt_{step:03d}")
    evals = os.path.join(ROOT, "data", "evals")
    assert hf.main([str(root), f"--tasks={evals}", "--shots=0"]) == 0
    rows = [json.loads(line) for line in open(root / "evals.jsonl")]
    assert [(r["ckpt"], r["step"]) for r in rows] == [("ckpt_000", 0), ("ckpt_120", 120)]
    # every task file but the few-shot ones, and the code tasks, which run only with their flag
    scored = {t[:-6]: 0 for t in os.listdir(evals) if t.endswith(".jsonl") and t.count(".") == 1
              and not t.startswith(("humaneval", "mbpp"))}
    assert "gsm8k" in scored and all(r["tasks"] == scored for r in rows)
    for r in rows:  # each row's scores are transformers' own, item by item
        for task in ("arc_easy", "hellaswag", "ceval"):
            acc, acc_norm, _ = lm_eval_scores(root / r["ckpt"], root, os.path.join(evals, task + ".jsonl"))
            assert (r[f"{task}/acc"], r[f"{task}/acc_norm"]) == (acc, acc_norm), (r["ckpt"], task)
    # and the log-likelihoods behind them agree to 1e-4 nats
    model, cfg, enc, meta = hf.load(str(root / "ckpt_120"))
    assert cfg is None and meta["step"] == 120 and enc.eot_token == 2
    path = os.path.join(evals, "mmlu.jsonl")
    items = tasks.read_task(path)
    requests = [tasks.encode_pair(enc, ctx, " " + c) for ctx, it in zip(tasks.contexts(path, items, 0), items) for c in it.choices]
    ours = tasks.loglikelihoods(model, requests)
    theirs = lm_eval_scores(root / "ckpt_120", root, path)[2]
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-4
    # the same command again evaluates nothing; a new checkpoint alone is evaluated
    hf.export_llama(make_model(5, vocab_size=1024, max_seq_len=512), root / "ckpt_240")
    hf.main([str(root), f"--tasks={evals}", "--shots=0"])
    assert [json.loads(line)["ckpt"] for line in open(root / "evals.jsonl")] == ["ckpt_000", "ckpt_120", "ckpt_240"]
    assert "ckpt_240" in open(root / "evals.md").read()
    with pytest.raises(hf.ConfigError, match="--tasks"):  # no run data to measure loss on
        hf.sweep(str(root / "ckpt_000"), "")


def test_tokenize_and_train_with_a_released_tokenizer(llama_dir, tmp_path):
    from helpers import small_args
    out = str(tmp_path / "tokens")
    manifest = tokenize_tiny(out, docs=TINY, tokenizer=llama_dir)
    assert manifest["tokenizer"] == "tokenizer.json" and manifest["eot"] == 2 and manifest["dtype"] == "uint16"
    enc, theirs = tokenizer.tokenizer_of(out, manifest), transformers.AutoTokenizer.from_pretrained(llama_dir)
    # the shards hold each document's ids as transformers gives them (<s> first), then </s>
    zh = np.concatenate([data.read_shard(os.path.join(out, s["file"])) for s in manifest["shards"] if s["source"] == "zh"])
    want = sum((theirs(t)["input_ids"] + [2] for t in load("zh")), [])
    assert want[0] == 1 and enc.bos_ids == [1]
    assert zh.tolist() == want
    assert enc.encode_ordinary("中文") == theirs("中文", add_special_tokens=False)["input_ids"]
    with pytest.raises(stage.DataError, match="lacks <\\|fim_prefix\\|>"):
        data.Batches(out, 32, 4, 0, fim_rate=0.5)
    # train.py prepares its data_dir with the tokenizer its config names, and trains on it
    model = train.main(small_args(str(tmp_path / "tokens2"), str(tmp_path / "run"), f"--tokenizer={llama_dir}",
                                  "--max_steps=3"))
    assert model.cfg.vocab_size == 960  # 959 tokens, padded to a multiple of 64
    assert data.load_manifest(str(tmp_path / "tokens2"))["shards"] == manifest["shards"]
    ckpt = sorted(str(p) for p in (tmp_path / "run").glob("ckpt_*"))[-1]
    assert hf.load(ckpt)[2].encode_ordinary("中文") == enc.encode_ordinary("中文")


def test_export_a_run_trained_with_a_released_tokenizer(llama_dir, tmp_path):
    from helpers import small_args
    train.main(small_args(str(tmp_path / "tokens"), str(tmp_path / "run"), f"--tokenizer={llama_dir}", "--max_steps=2"))
    hf.main(["export", str(tmp_path / "run"), str(tmp_path / "hf")])
    ours = tokenizer.load_tokenizer(str(tmp_path / "hf"))
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = load("zh")[0][:300] + " and English"
    assert ours.encode_ordinary(text) == theirs(text, add_special_tokens=False)["input_ids"]
    c = json.load(open(tmp_path / "hf" / "config.json"))
    assert (c["eos_token_id"], c["bos_token_id"]) == (theirs.eos_token_id, theirs.bos_token_id) == (2, 1)
