"""
The LLaMA-family decoder of nano360, in one file.

One ModelConfig describes all three seed models exactly (see config/):
  Amber-7B        RMSNorm, no biases, full rotary, untied embeddings (LLaMA-7B)
  CrystalCoder-7B LayerNorm with bias, biases in attention and MLP, rotary on 32
                  of 128 dims, tied embeddings, muP multipliers
  MAP-Neo-7B      RMSNorm, head_dim 192 (not d_model / n_head), untied
The model is built on the meta device and materialised by one call to
init_weights(), so the same seed gives the same weights on any number of GPUs.
What training and evaluation share about running the model is here too: the one sampler
(temperature, top-k, top-p, KV cache: GPT.stream, and sample_text for a tokenizer's text), the
validation loss, the document ids of packed sequences, and the bf16 autocast.
"""
import math
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import HAVE_TRITON


def norm_layer(cfg):
    if cfg.norm == "layernorm":
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)


def rope_tables(cfg, device):
    # cos and sin of (max_seq_len, rotary_dim/2) angles; the rotation pairs dim i with
    # dim i + rotary_dim/2.
    # float64, because position x frequency in float32 is off by ~1e-3 rad at position 8192
    inv_freq = cfg.rope_theta ** -(
        torch.arange(0, cfg.rotary_dim, 2, device=device, dtype=torch.float64) / cfg.rotary_dim)
    angles = torch.outer(torch.arange(cfg.max_seq_len, device=device, dtype=torch.float64),
                         inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    # x: (B, T, H, D); only the first 2 * cos.size(-1) dims rotate (partial rotary),
    # the rest pass through
    r, wide = cos.size(-1), torch.promote_types(x.dtype, torch.float32)  # rotate in fp32 (or fp64)
    x1, x2, rest = x[..., :r].to(wide), x[..., r:2 * r].to(wide), x[..., 2 * r:]
    # cos, sin: (T, r), or (B, T, r) where each row has positions of its own (left padding)
    cos, sin = cos.unsqueeze(-2).to(wide), sin.unsqueeze(-2).to(wide)
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)
    return torch.cat([rotated, rest], dim=-1)


def attention(q, k, v, scale, impl, doc_ids=None):
    # q: (B, Tq, Hq, D), k and v: (B, Tk, Hkv, D),
    # the layout of nanokernels.flash_attention.flash_attn.
    # the queries are the last Tq positions of the Tk keys (Tq < Tk when decoding with a KV cache).
    # doc_ids (B, T): a token sees only the keys of its own document (a run of equal ids);
    # or (B, Tq, Tk) booleans, the mask itself, for what runs cannot say (tasks.loglikelihoods:
    # each answer sees its question and itself, not the other answers)
    Tq, Tk = q.size(1), k.size(1)
    if impl == "auto":
        impl = "triton" if q.is_cuda and HAVE_TRITON else "sdpa"
    if impl == "triton" and Tq == Tk and (doc_ids is None or doc_ids.dim() == 2):
        from nanokernels.flash_attention import flash_attn
        return flash_attn(q, k, v, causal=True, softmax_scale=scale, doc_ids=doc_ids)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    gqa = dict(enable_gqa=True) if q.size(1) != k.size(1) else {}
    if Tq == Tk and doc_ids is None:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **gqa)
    elif doc_ids is not None and doc_ids.dim() == 3:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=doc_ids[:, None], scale=scale, **gqa)
    else:
        mask = (torch.arange(Tk, device=q.device)[None, :]
                <= torch.arange(Tk - Tq, Tk, device=q.device)[:, None])
        if doc_ids is not None:
            # (B, 1, Tq, Tk): T x T booleans, fine for a reference, not for 8k contexts
            mask = mask & (doc_ids[:, -Tq:, None] == doc_ids[:, None, :])[:, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, **gqa)
    return y.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg, impl="auto"):
        super().__init__()
        self.cfg, self.impl = cfg, impl
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim,
                             bias=cfg.qkv_bias)
        self.out = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=cfg.attn_out_bias)

    def forward(self, x, cos, sin, cache=None, doc_ids=None):
        cfg, (B, T, _) = self.cfg, x.shape
        q, k, v = self.qkv(x).split([cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim,
                                     cfg.n_kv_head * cfg.head_dim], dim=-1)
        q = apply_rope(q.view(B, T, cfg.n_head, cfg.head_dim), cos, sin)
        k = apply_rope(k.view(B, T, cfg.n_kv_head, cfg.head_dim), cos, sin)
        v = v.view(B, T, cfg.n_kv_head, cfg.head_dim)
        if cache is not None:
            k, v = cache.update(k, v)
        scale = 1.0 / cfg.head_dim if cfg.qk_scale_by_d else 1.0 / math.sqrt(cfg.head_dim)
        y = attention(q, k, v, scale, self.impl, doc_ids)
        return self.out(y.reshape(B, T, cfg.n_head * cfg.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        # gate and up, fused
        self.up = nn.Linear(cfg.d_model, 2 * cfg.ffn_hidden, bias=cfg.ffn_bias)
        self.down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=cfg.ffn_bias)

    def forward(self, x):
        gate, up = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg, attn_impl="auto"):
        super().__init__()
        self.norm1, self.attn = norm_layer(cfg), Attention(cfg, attn_impl)
        self.norm2, self.mlp = norm_layer(cfg), MLP(cfg)

    def forward(self, x, cos, sin, cache=None, doc_ids=None):
        x = x + self.attn(self.norm1(x), cos, sin, cache, doc_ids)
        return x + self.mlp(self.norm2(x))


class KVCache:
    """Keys and values of one layer for max_len positions, allocated at the first update in the
    dtype the keys are computed in (bf16 under autocast or FSDP2's mixed precision)."""

    def __init__(self, batch, max_len):
        self.shape, self.k, self.v, self.len = (batch, max_len), None, None, 0

    def update(self, k, v):
        if self.k is None:
            self.k = k.new_zeros(self.shape + k.shape[2:])
            self.v = v.new_zeros(self.shape + v.shape[2:])
        T = k.size(1)
        self.k[:, self.len:self.len + T], self.v[:, self.len:self.len + T] = k, v
        self.len += T
        return self.k[:, :self.len], self.v[:, :self.len]


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits = logit_mult * x @ weight.T against targets (-1 ignored),
    computed `chunk` rows at a time, with the gradients of each chunk worked out on the way,
    so that only a (chunk, V) block of logits ever exists: at a 64k vocabulary and 8k tokens a
    sequence, the full fp32 logits and their gradient would take 4 GB."""

    @staticmethod
    def forward(ctx, x, weight, targets, logit_mult, chunk):
        # the loss in fp32 (or fp64), as in forward()
        wide = torch.promote_types(x.dtype, torch.float32)
        n = (targets >= 0).sum().clamp(min=1).to(wide)
        loss = torch.zeros((), device=x.device, dtype=wide)
        grad_x, grad_w = (torch.empty_like(x),
                          torch.zeros(weight.shape, device=weight.device, dtype=wide))
        for a in range(0, x.size(0), chunk):
            xc, tc = x[a:a + chunk], targets[a:a + chunk]
            logits = (xc @ weight.t()).to(wide) * logit_mult
            keep = tc >= 0
            lse = logits.logsumexp(-1)
            loss += (lse - logits.gather(1, tc.clamp(min=0)[:, None])[:, 0])[keep].sum()
            # d loss / d logits = softmax - onehot, over n, on kept rows
            d = torch.softmax(logits, -1)
            d[keep, tc[keep]] -= 1
            d = (d * keep[:, None] * (logit_mult / n)).to(x.dtype)
            grad_x[a:a + chunk] = d @ weight
            grad_w += (d.t() @ xc).to(wide)
        ctx.save_for_backward(grad_x, grad_w.to(weight.dtype))
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, None, None, None


class GPT(nn.Module):
    """The decoder of cfg. How it runs is not part of what it is: attn_impl ("auto": the Triton
    kernel on CUDA, SDPA elsewhere; "triton"; "sdpa") and loss_chunk (> 0: the training loss
    that many tokens at a time) change no result beyond rounding, so checkpoints omit them."""

    def __init__(self, cfg, attn_impl="auto", loss_chunk=0):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("vocab_size must be set (train.py sets it from the tokenizer)")
        self.cfg, self.loss_chunk = cfg, loss_chunk
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, attn_impl) for _ in range(cfg.n_layer))
        self.norm = norm_layer(cfg)
        self.lm_head = (None if cfg.tie_embeddings
                        else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False))
        cos, sin = rope_tables(cfg, device="meta")
        self.register_buffer("rope_cos", cos, persistent=False)  # derived, never checkpointed
        self.register_buffer("rope_sin", sin, persistent=False)

    @torch.no_grad()
    def init_weights(self, seed=0):
        """Fill every parameter and buffer in place: call after to_empty() on the real device.
        Sharded (FSDP2) weights: each rank draws the whole tensor and keeps its shard, so the
        weights are the same at any number of GPUs."""
        cfg = self.cfg
        device = self.embed.weight.device
        gen = torch.Generator(device=device).manual_seed(seed)

        def normal(w, std):
            full = torch.empty(w.shape, device=device, dtype=w.dtype)
            if cfg.init_truncate > 0:
                nn.init.trunc_normal_(full, 0.0, std, -cfg.init_truncate * std,
                                      cfg.init_truncate * std, generator=gen)
            else:
                nn.init.normal_(full, 0.0, std, generator=gen)
            if hasattr(w, "device_mesh"):  # a DTensor: keep this rank's part, no communication
                from torch.distributed.tensor import distribute_tensor
                full = distribute_tensor(full, w.device_mesh, w.placements,
                                         src_data_rank=None).to_local()
                w = w.to_local()
            w.copy_(full)

        normal(self.embed.weight, cfg.init_std_embed)
        for block in self.blocks:
            normal(block.attn.qkv.weight, cfg.init_std)
            normal(block.attn.out.weight, cfg.init_std_out)
            normal(block.mlp.up.weight, cfg.init_std)
            normal(block.mlp.down.weight, cfg.init_std_out)
        if self.lm_head is not None:
            normal(self.lm_head.weight, cfg.init_std)
        for m in self.modules():
            if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
                m.reset_parameters()  # weight 1, bias 0
            elif isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        self.rope_cos, self.rope_sin = rope_tables(cfg, self.embed.weight.device)

    def forward(self, idx, targets=None, caches=None, doc_ids=None, pos=None, at=None):
        """idx (B, T) -> logits (B, T, V), or the mean cross-entropy when targets (B, T) are given
        (targets of -1 are ignored). With caches, idx continues the cached positions. With doc_ids
        (B, T, or all the keys' with caches), packed documents (runs of equal ids) do not attend
        to each other; (B, T, T) booleans are the attention mask itself. pos (B, T): each token's
        position, where rows do not start at 0 together (left-padded prompts, several answers
        after one question). at (B, T) booleans: the logits (N, V) of those positions alone."""
        start = caches[0].len if caches else 0
        T = idx.size(1)
        end = start + T if pos is None else int(pos.max()) + 1  # the last position, plus one
        if end > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {end} tokens is longer than "
                             f"max_seq_len={self.cfg.max_seq_len}")
        cos, sin = ((self.rope_cos[start:start + T], self.rope_sin[start:start + T]) if pos is None
                    else (self.rope_cos[pos], self.rope_sin[pos]))
        x = self.embed(idx)
        # muP; skipped otherwise, as a full pass over the activations
        if self.cfg.embed_mult != 1.0:
            x = x * self.cfg.embed_mult
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, caches[i] if caches else None, doc_ids)
        x = self.norm(x)
        if at is not None:  # scoring reads a few positions of each row: the rest need no logits
            x = x[at]
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        # never the (B, T, V) fp32 logits
        if targets is not None and self.loss_chunk and self.training:
            return ChunkedCrossEntropy.apply(x.flatten(0, 1), weight, targets.reshape(-1),
                                             self.cfg.logit_mult, self.loss_chunk)
        logits = F.linear(x, weight)
        if self.cfg.logit_mult != 1.0:
            logits = logits * self.cfg.logit_mult
        if targets is None:
            return logits
        # the loss in fp32 (or fp64)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, generator=None):
        """idx (B, T) continued by max_new_tokens: (B, T + max_new_tokens)."""
        return torch.cat([idx, *self.stream(idx, max_new_tokens, temperature, top_k, top_p,
                                            generator)], dim=1)

    @torch.no_grad()
    def stream(self, idx, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, generator=None,
               vocab=0, pad=None):
        """Yield the next token (B, 1) of idx (B, T), max_new_tokens times, reusing keys and values
        through a KV cache. temperature 0 is greedy; top_k keeps the k most likely tokens; top_p
        the smallest set whose probability reaches top_p (nucleus); generator: one, or one per
        row (a row's draws then do not depend on the rows batched with it); vocab > 0: only
        tokens below it (the rows past a tokenizer's last token pad the vocabulary, and mean
        nothing). pad (B,): prompts of different lengths, left-padded: row r's first pad[r]
        tokens are padding, which no token attends to, and its positions count from the token
        after them, as if it were alone."""
        B, T = idx.shape
        caches = [KVCache(B, T + max_new_tokens) for _ in self.blocks]
        real = pos = None
        if pad is not None:
            at = torch.arange(T + max_new_tokens, device=idx.device)[None]
            pad = torch.as_tensor(pad, device=idx.device)[:, None]
            real, pos = (at >= pad).long(), (at - pad).clamp(min=0)  # padding is document 0
        logits = self(idx, caches=caches, doc_ids=None if pad is None else real[:, :T],
                      pos=None if pad is None else pos[:, :T])[:, -1]
        for i in range(max_new_tokens):
            if vocab:
                logits[:, vocab:] = float("-inf")
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            yield nxt
            if i + 1 < max_new_tokens:
                n = T + i + 1  # the keys so far, the new token's among them
                logits = self(nxt, caches=caches, doc_ids=None if pad is None else real[:, :n],
                              pos=None if pad is None else pos[:, n - 1:n])[:, -1]

    def num_params(self, non_embedding=False):
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:  # the embedding table and an untied lm_head
            n -= self.embed.weight.numel() + (
                self.lm_head.weight.numel() if self.lm_head is not None else 0)
        return n

    def estimate_flops(self, seq_len):
        """Training FLOPs per token: 6 per weight of every matmul (forward 2, backward 4) plus
        causal attention, QK^T and AV over seq_len/2 keys on average, forward and backward."""
        cfg = self.cfg
        matmul = sum(p.numel() for n, p in self.named_parameters()
                     if p.dim() == 2 and n != "embed.weight")
        if self.lm_head is None:
            matmul += self.embed.weight.numel()  # tied: the embedding is also the output matmul
        # 12 * L * H * D * T, halved for causal
        attn = 6 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len
        return 6 * matmul + attn

    def estimate_memory(self, tokens, world_size=1, state_dtype="float32"):
        """Estimated bytes per GPU of training under FSDP2 full sharding over world_size GPUs, bf16
        compute with fp32 master weights, gradients and AdamW state (moments in state_dtype),
        tokens per micro-batch: what `train.py --dry_run` prints."""
        m, N = self.cfg, self.num_params()
        block = sum(p.numel() for p in self.blocks[0].parameters())
        root = N - m.n_layer * block
        # saved for backward per token and layer, bf16: two norm inputs and outputs, q k v and the
        # attention output, the MLP's gate|up output, silu(gate) and the product fed to down
        per_layer = (2 * (4 * m.d_model + (2 * m.n_head + 2 * m.n_kv_head) * m.head_dim
                          + 4 * m.ffn_hidden)
                     + 4 * m.n_head)
        logits = 10 * m.vocab_size  # bf16 logits, their fp32 copy and the saved log-softmax
        bf16_state = state_dtype == "bfloat16"
        return {
            "params fp32 (shard)": 4 * N / world_size,
            "grads fp32 (shard)": 4 * N / world_size,
            f"AdamW m, v {'bf16' if bf16_state else 'fp32'} (shard)":
                (4 if bf16_state else 8) * N / world_size,
            "bf16 params gathered (2 blocks + root)": 2 * (2 * block + root),
            "fp32 grads of a block before reduce-scatter": 4 * block,
            "activations": tokens * (m.n_layer * per_layer + logits),
            "activations, full checkpointing":
                tokens * (m.n_layer * 2 * m.d_model + per_layer + logits),
        }

    def param_groups(self, weight_decay, decay_all):
        """AdamW groups: weight decay on every parameter (decay_all, as Amber) or only on the
        matrices inside blocks and an untied lm_head (no decay on norms, biases, embeddings);
        the matrices inside blocks carry muP's hidden_lr_mult."""
        groups = {}
        for name, p in self.named_parameters():
            hidden = name.startswith("blocks.") and p.dim() == 2
            decay = decay_all or hidden or name == "lm_head.weight"
            key = (decay, hidden)
            groups.setdefault(key, dict(params=[], names=[],
                                        weight_decay=weight_decay if decay else 0.0,
                                        lr_mult=self.cfg.hidden_lr_mult if hidden else 1.0))
            groups[key]["params"].append(p)
            groups[key]["names"].append(name)
        return list(groups.values())


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """The next token (B, 1) drawn from logits (B, V)."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:  # drop a token when the tokens more likely than it already reach top_p
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if isinstance(generator, (list, tuple)):  # one per row
        return torch.cat([torch.multinomial(p[None], 1, generator=g)
                          for p, g in zip(probs, generator)])
    return torch.multinomial(probs, 1, generator=generator)


def sample_text(model, enc, prompt, max_new_tokens, temperature=0.8, top_k=50, top_p=1.0,
                generator=None):
    """Yield the text of each token sampled after prompt, until end-of-text; enc is a tokenizer of
    tokenizer.load_tokenizer. A character split over several tokens comes out whole, when its
    last byte does."""
    import codecs
    device = next(model.parameters()).device
    # bos_ids: LLaMA's <s> first
    idx = torch.tensor([enc.bos_ids + enc.encode_ordinary(prompt)], device=device)
    utf8 = codecs.getincrementaldecoder("utf-8")("replace")
    for nxt in model.stream(idx, min(max_new_tokens, model.cfg.max_seq_len - idx.size(1)),
                            temperature, top_k, top_p, generator, vocab=enc.n_vocab):
        if nxt.item() == enc.eot_token:
            break
        text = utf8.decode(enc.decode_single_token_bytes(nxt.item()))
        if text:
            yield text
    if utf8.decode(b"", final=True):  # the bytes of an unfinished character
        yield "\ufffd"


# -----------------------------------------------------------------------------
# what training and evaluation share: autocast, document ids, the validation loss

def autocast(device, bf16):
    """bf16 autocast on device when bf16 (under FSDP2 its mixed-precision policy casts instead)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def doc_ids(tokens, eot):
    """Document ids (B, T) of packed tokens (B, T), for attention masking: the end-of-text token
    that closes one document opens the next id, so the position that predicts a document's
    first token sees nothing of the document before it."""
    return (tokens == eot).cumsum(1)


@torch.no_grad()
def validation_loss(model, val, batch_size, device, autocast=nullcontext(), eot=None):
    """Mean loss per token of each source's validation windows ({source: (n, T + 1) tokens}), and
    over all of them as 'all': the run's validation, which eval.py repeats. eot: attention
    stops at document boundaries (doc_mask)."""
    was_training = model.training
    model.eval()
    out, total = {}, 0.0
    for source, seqs in val.items():
        loss = 0.0
        for i in range(0, len(seqs), batch_size):
            x = torch.from_numpy(seqs[i:i + batch_size]).to(device)
            with autocast:
                docs = doc_ids(x[:, :-1], eot) if eot is not None else None
                loss += model(x[:, :-1], x[:, 1:], doc_ids=docs).item() * len(x)
        out[source] = loss / len(seqs)
        total += loss
    out["all"] = total / sum(len(s) for s in val.values())
    model.train(was_training)
    return out
