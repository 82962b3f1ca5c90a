import math, os

import pytest
import torch

import parallel
from config import TrainConfig, load_config
from helpers import ROOT
from config import ModelConfig
from model import GPT


def meta_model(name):
    _, mcfg = load_config([os.path.join(ROOT, "config", f"{name}.py")])
    with torch.device("meta"):
        return GPT(mcfg)


def test_parameter_counts_of_the_7b_configs():
    amber, crystal, neo = meta_model("amber7b"), meta_model("crystalcoder7b"), meta_model("neo7b")
    # Amber is LLaMA-7B's shape (vocabulary 32000, d 4096, 32 layers, SwiGLU 11008, untied), counted
    # by hand: 6,738,415,616, the count LLaMA-7B's released weights hold
    layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096  # q, k, v, o; gate, up, down; two norms
    assert amber.num_params() == 32 * layer + 2 * 32000 * 4096 + 4096 == 6_738_415_616
    assert abs(neo.num_params() / 7.79e9 - 1) < 0.005
    assert abs(neo.num_params(non_embedding=True) / 7.40e9 - 1) < 0.005
    # CrystalCoder, exactly, from its released checkpoint (LLM360/crystalcoder-train,
    # CrystalCoder/pytorch_model.bin.index.json): total_size is 26,960,145,024 bytes of fp32
    # parameters, plus a saved copy of the tied lm_head (32032 x 4096), plus per layer a bool
    # causal-mask buffer (2048 x 2048, 1 byte each) and a float32 masked_bias (4 bytes).
    # (the LLM360 model card's 6,583,754,752 is 8,476,032 more than that checkpoint holds)
    assert crystal.num_params() == (26_960_145_024 - 32 * (2048 * 2048 + 4)) // 4 - 32032 * 4096


def test_estimate_flops_hand_worked():
    cfg = ModelConfig(vocab_size=100, n_layer=2, d_model=16, n_head=2, n_kv_head=1, head_dim=8, ffn_hidden=24)
    with torch.device("meta"):
        m = GPT(cfg)
    # per layer: qkv 16 x (2 + 2*1) * 8 = 512, out 16 * 16 = 256, up 16 * 48 = 768, down 24 * 16 = 384
    # -> 1920; two layers 3840; lm_head 100 * 16 = 1600; matmul weights 5440
    # attention at T = 10: 6 * layers 2 * heads 2 * head_dim 8 * T 10 = 1920
    assert m.estimate_flops(10) == 6 * 5440 + 1920
    cfg.tie_embeddings = True
    with torch.device("meta"):
        tied = GPT(cfg)
    assert tied.estimate_flops(10) == 6 * 5440 + 1920  # the tied table is still the output matmul


# --------------------------------------------------------------------------------------------
# every architecture variant against a reference written the long way, in float64

VARIANTS = {
    "amber": dict(norm="rmsnorm", norm_eps=1e-6),
    "crystal": dict(norm="layernorm", qkv_bias=True, attn_out_bias=True, ffn_bias=True, rotary_dim=4,
                    tie_embeddings=True, embed_mult=14.6, logit_mult=0.13875, qk_scale_by_d=True, init_truncate=2.0),
    "neo": dict(head_dim=24, norm_eps=1e-5, rope_theta=500.0),
    "gqa": dict(n_head=4, n_kv_head=2, head_dim=8),
    "mqa": dict(n_head=4, n_kv_head=1, head_dim=8, qkv_bias=True),
}


def variant(name, **kw):
    base = dict(vocab_size=97, n_layer=2, d_model=32, n_head=2, ffn_hidden=40, max_seq_len=32)
    return ModelConfig(**{**base, **VARIANTS[name], **kw})


def build(cfg, seed=0, dtype=torch.float64, **run):
    """cfg's model in dtype; run: run settings of TrainConfig (attn_impl, loss_chunk)."""
    model = parallel.build_model(cfg, "cpu", seed, TrainConfig(**run)).to(dtype)
    with torch.no_grad():  # biases and norm gains away from 0 and 1, so that each one is tested
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def reference_logits(sd, c, idx, doc_ids=None):
    """The decoder spelled out: explicit norms, rotary angles, per-head softmax attention."""
    def norm(x, prefix):
        if c.norm == "rmsnorm":
            return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.norm_eps) * sd[prefix + ".weight"]
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + c.norm_eps) * sd[prefix + ".weight"] + sd[prefix + ".bias"]

    def linear(x, prefix):
        y = x @ sd[prefix + ".weight"].T
        return y + sd[prefix + ".bias"] if prefix + ".bias" in sd else y

    def rotate(v):  # v: (T, D); dims i and i + r/2 turn by angle t * theta^(-2i/r), i < r/2
        out, r = v.clone(), c.rotary_dim
        for t in range(v.shape[0]):
            for i in range(r // 2):
                a = t * c.rope_theta ** (-2 * i / r)
                x1, x2 = v[t, i], v[t, i + r // 2]
                out[t, i], out[t, i + r // 2] = x1 * math.cos(a) - x2 * math.sin(a), x2 * math.cos(a) + x1 * math.sin(a)
        return out

    B, T = idx.shape
    H, K, D = c.n_head, c.n_kv_head, c.head_dim
    scale = 1 / D if c.qk_scale_by_d else 1 / math.sqrt(D)
    x = sd["embed.weight"][idx] * c.embed_mult
    for layer in range(c.n_layer):
        p = f"blocks.{layer}."
        qkv = linear(norm(x, p + "norm1"), p + "attn.qkv")
        q, k, v = qkv[..., :H * D], qkv[..., H * D:(H + K) * D], qkv[..., (H + K) * D:]
        heads = []
        for b in range(B):
            per_head = []
            for h in range(H):
                kv = h // (H // K)  # the kv head this query head shares
                qh = rotate(q[b, :, h * D:(h + 1) * D])
                kh = rotate(k[b, :, kv * D:(kv + 1) * D])
                vh = v[b, :, kv * D:(kv + 1) * D]
                scores = (qh @ kh.T) * scale
                hidden = torch.ones(T, T, dtype=torch.bool).triu(1)
                if doc_ids is not None:  # packed documents: no attention across a boundary
                    hidden |= doc_ids[b][:, None] != doc_ids[b][None, :]
                scores = scores.masked_fill(hidden, float("-inf"))
                per_head.append(torch.softmax(scores, dim=-1) @ vh)
            heads.append(torch.cat(per_head, dim=-1))
        x = x + linear(torch.stack(heads), p + "attn.out")
        u = linear(norm(x, p + "norm2"), p + "mlp.up")
        gate, up = u[..., :c.ffn_hidden], u[..., c.ffn_hidden:]
        x = x + linear(gate * torch.sigmoid(gate) * up, p + "mlp.down")
    x = norm(x, "norm")
    table = sd["embed.weight"] if c.tie_embeddings else sd["lm_head.weight"]
    return (x @ table.T) * c.logit_mult


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_matches_float64_reference(name):
    cfg = variant(name)
    model = build(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 11), generator=torch.Generator().manual_seed(3))
    sd = dict(model.state_dict())
    ref = reference_logits(sd, cfg, idx)
    got = model(idx)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    targets = torch.randint(0, cfg.vocab_size, (2, 11), generator=torch.Generator().manual_seed(4))
    targets[0, :3] = -1  # ignored positions
    keep = targets.view(-1) >= 0
    ref_loss = -torch.log_softmax(ref.view(-1, cfg.vocab_size), -1)[keep, targets.view(-1)[keep]].mean()
    torch.testing.assert_close(model(idx, targets), ref_loss, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["amber", "mqa"])
def test_document_masking_matches_float64_reference(name):
    cfg = variant(name)
    model = build(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 11), generator=torch.Generator().manual_seed(3))
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2], [0] * 11])
    ref = reference_logits(dict(model.state_dict()), cfg, idx, doc_ids)
    torch.testing.assert_close(model(idx, doc_ids=doc_ids), ref, rtol=1e-10, atol=1e-10)
    # the mask matters: unmasked, the later documents see the earlier ones
    assert not torch.allclose(model(idx)[0, 3:8], ref[0, 3:8])


def test_layer_shapes_follow_the_config():
    model = build(variant("neo"))  # head_dim 24 x 2 heads = 48 != d_model 32
    assert model.blocks[0].attn.qkv.weight.shape == (3 * 48, 32)
    assert model.blocks[0].attn.out.weight.shape == (32, 48)
    crystal = build(variant("crystal"))
    assert crystal.lm_head is None and crystal.blocks[0].attn.qkv.bias is not None
    assert isinstance(crystal.norm, torch.nn.LayerNorm) and crystal.norm.bias is not None


@pytest.mark.parametrize("name", ["amber", "crystal", "gqa"])
def test_kv_cache_generation_equals_full_recomputation(name):
    cfg = variant(name)
    model = build(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (2, 5), generator=torch.Generator().manual_seed(5))
    cached = model.generate(prompt, 12, temperature=0)
    seq = prompt
    for _ in range(12):  # no cache: the whole sequence again for every new token
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, seq)
    # the cached logits themselves, position by position
    from model import KVCache
    caches = [KVCache(2, seq.size(1)) for _ in range(cfg.n_layer)]
    step_logits = [model(seq[:, :4], caches=caches)] + [model(seq[:, t:t + 1], caches=caches) for t in range(4, seq.size(1))]
    torch.testing.assert_close(torch.cat(step_logits, dim=1), model(seq), rtol=1e-10, atol=1e-10)


def test_sampling_is_seeded_and_respects_top_k():
    cfg = variant("amber")
    model = build(cfg).eval()
    prompt = torch.zeros(1, 3, dtype=torch.long)
    a = model.generate(prompt, 20, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 20, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # with top_k=1 sampling is greedy whatever the temperature
    assert torch.equal(model.generate(prompt, 8, temperature=2.0, top_k=1, generator=torch.Generator().manual_seed(2)),
                       model.generate(prompt, 8, temperature=0))


def test_sampling_never_draws_the_padding_rows():
    # the vocabulary is padded past the tokenizer's last token (resolve_vocab): rows that decode
    # to nothing. A model that favours them (barely trained, say) still samples real tokens only
    cfg = variant("amber")
    model = build(cfg).eval()
    real = cfg.vocab_size - 5
    favour = torch.zeros(cfg.vocab_size)
    favour[real:] = 100.0
    model.register_forward_hook(lambda module, inputs, logits: logits + favour)
    prompt = torch.zeros(2, 3, dtype=torch.long)
    free = model.generate(prompt, 6, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert (free[:, 3:] >= real).all()  # unmasked, the padding wins
    for temperature, top_k in ((1.0, 0), (0.8, 3), (0, 0)):
        drawn = torch.cat(list(model.stream(prompt, 6, temperature, top_k, generator=torch.Generator().manual_seed(0),
                                            vocab=real)), dim=1)
        assert (drawn < real).all(), (temperature, top_k)
    logits = model(prompt)[:, -1, :real]  # greedy: the most likely real token
    greedy = next(model.stream(prompt, 1, temperature=0, vocab=real))
    assert torch.equal(greedy[:, 0], logits.argmax(-1))


def test_init_weights_stds_and_determinism():
    cfg = ModelConfig(vocab_size=4096, n_layer=2, d_model=256, n_head=4, ffn_hidden=512, init_std=0.02,
                      init_std_embed=0.073, init_std_out=0.00228, init_truncate=2.0)
    a = build(cfg, seed=7, dtype=torch.float32)
    b = parallel.build_model(cfg, "cpu", 7)
    c = parallel.build_model(cfg, "cpu", 8)
    assert torch.equal(a.blocks[1].mlp.up.weight, b.blocks[1].mlp.up.weight)
    assert not torch.equal(b.blocks[1].mlp.up.weight, c.blocks[1].mlp.up.weight)
    for w, std in ((b.embed.weight, 0.073), (b.blocks[0].attn.qkv.weight, 0.02), (b.blocks[0].mlp.down.weight, 0.00228)):
        assert w.abs().max() <= 2 * std + 1e-7  # truncated at two sigma
        # a normal truncated at +-2 sigma has std 0.8796 sigma
        assert abs(w.std().item() / (0.8796 * std) - 1) < 0.03
    assert torch.equal(b.blocks[0].norm1.weight, torch.ones(256))
    plain = parallel.build_model(ModelConfig(vocab_size=64, n_layer=8, d_model=256, n_head=4, ffn_hidden=512), "cpu", 0)
    assert abs(plain.blocks[0].attn.out.weight.std().item() / (0.02 / math.sqrt(16)) - 1) < 0.05  # scaled residual init


def test_top_k_and_top_p_by_hand():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p=0.7 keeps the two tokens whose predecessors sum
    # to less than 0.7 (0 and 0.5), renormalised to 5/8 and 3/8; top_k=3 keeps 0.5, 0.3, 0.15
    from model import sample_next
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log().repeat(20000, 1)
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next(logits, 1.0, 0, 0.7, gen)[:, 0], minlength=4) / 20000
    assert counts[0] == counts[2] == 0 and abs(counts[1] - 5 / 8) < 0.01 and abs(counts[3] - 3 / 8) < 0.01
    counts = torch.bincount(sample_next(logits, 1.0, 3, 1.0, gen)[:, 0], minlength=4) / 20000
    assert counts[2] == 0 and abs(counts[1] - 0.5 / 0.95) < 0.01 and abs(counts[0] - 0.15 / 0.95) < 0.01
    assert torch.equal(sample_next(logits[:1], 0.0), torch.tensor([[1]]))  # greedy


def test_param_groups_decay_and_mup_lr():
    model = build(variant("crystal", hidden_lr_mult=0.0625))
    names = lambda groups, pred: {n for g in groups if pred(g) for n in g["names"]}
    groups = model.param_groups(0.1, decay_all=False)
    decayed = names(groups, lambda g: g["weight_decay"] > 0)
    assert decayed == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert names(groups, lambda g: g["lr_mult"] == 0.0625) == decayed
    everything = model.param_groups(0.1, decay_all=True)
    assert names(everything, lambda g: g["weight_decay"] == 0.1) == {n for n, _ in model.named_parameters()}
    assert sum(len(g["params"]) for g in everything) == len(list(model.parameters()))


@pytest.mark.parametrize("name", ["amber", "crystal"])
def test_chunked_loss_equals_full_logits(name):
    # the loss a chunk of tokens at a time, gradients included, in float64: the same numbers
    plain, chunked = build(variant(name)), build(variant(name), loss_chunk=7)  # 7 does not divide 2 x 11
    idx = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(3))
    targets = torch.roll(idx, -1, 1)
    targets[0, :4] = -1  # ignored positions
    a, b = plain(idx, targets), chunked(idx, targets)
    a.backward()
    (2 * b).backward()  # the incoming gradient scales what it returns
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for (n, p), q in zip(plain.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(2 * p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=n)
    chunked.eval()
    torch.testing.assert_close(chunked(idx, targets), a.detach(), rtol=1e-12, atol=1e-12)  # eval: plain logits
