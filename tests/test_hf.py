"""eval.py export/import: our model -> Hugging Face Llama -> transformers gives our logits, and back
gives our weights; the tokenizer as tokenizer.json. transformers is a test-only dependency."""
import dataclasses, json, os, random

import pytest
import torch

import data, train
from model import ModelConfig
import eval as hf
from conftest import ROOT

transformers = pytest.importorskip("transformers")
TINY = os.path.join(ROOT, "data", "tiny")


def make_model(seed=0, **kw):
    cfg = dict(vocab_size=512, n_layer=2, d_model=64, n_head=4, ffn_hidden=160, max_seq_len=64)
    model = train.build_model(ModelConfig(**{**cfg, **kw}), "cpu", seed)
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

    sd, cfg = hf.import_llama(tmp_path)
    orig = model.state_dict()
    assert sorted(sd) == sorted(orig)
    for k in orig:
        assert torch.equal(sd[k], orig[k]), k
    assert cfg == model.cfg, [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(model.cfg, f.name)]


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
def test_unsupported_features(kw, key, tmp_path):
    model = make_model(**kw)
    with pytest.raises(ValueError, match=key):
        hf.export_llama(model, tmp_path / "out")
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


def tiny_texts(name):
    return [json.loads(line)["text"] for line in open(os.path.join(TINY, name + ".jsonl"))]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    texts = sum((tiny_texts(n) for n in ("en", "zh", "code")), [])
    enc = data.train_tokenizer(texts, 512, str(d / "tok.tiktoken"))
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
    texts = tiny_texts(source) + ["don't  stop\r\n\n\t  x++ 12345 ünïcödé 🙂 中文，标点。", "   ", "a\n\n\nb"]
    rng = random.Random(source)  # random mixes of the characters the split pattern treats differently
    pool = list("aZé中文'sdtlLvV 123٣  \t\r\n\n.,;:!?-+*/(){}[]\"#@_~<>|\u00a0\u3000") + ["'ll", "'RE", "🙂"]
    texts += ["".join(rng.choices(pool, k=rng.randint(1, 40))) for _ in range(300)]
    for text in texts:
        ids = enc.encode_ordinary(text)
        assert tok.encode(text) == ids, text[:80]
        assert tok.decode(ids) == text
    # the specials are single tokens with tiktoken's ids
    for s in ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|pad|>"):
        assert tok.convert_tokens_to_ids(s) == enc.encode_single_token(s)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"


def test_tokenizer_vocab_too_big(tokenizer_dir, tmp_path):
    enc, out = tokenizer_dir
    tok_path = str(out.parent / "tok.tiktoken")
    with pytest.raises(ValueError, match="vocab_size"):
        hf.export_llama(make_model(vocab_size=512), tmp_path, tokenizer_path=tok_path)
