# CrystalCoder-7B (LLM360), phase 1 of 3: GPT-style blocks with LayerNorm and biases, SwiGLU,
# rotary on 32 of 128 dims, tied embeddings, and muP. Figures from the LLM360 paper
# (arXiv 2312.06550) and the released params/phase1/params.yaml (LLM360/crystalcoder-train).
# The three phases are one linear schedule (warmup 86 steps, then 0.012 -> 0.00012408 over
# 294,337 steps) cut into runs with different data: phase 2 starts at lr 0.0087825, which is
# where this line stands at step 79,721. Phases 2 and 3 change the data mixture (the `mixture`
# lines below).

out_dir = "out/crystalcoder7b"
docs_dir = ""
tokens_dir = "data/crystalcoder/tokens"
tokenizer = "bpe"
tokenizer_vocab = 31995        # + 5 special tokens; the model's table has 32032 rows
hash_shards = False
val_frac = 0.001               # held out per source; the evaluation reads eval_seqs of it

vocab_size = 32032
n_layer = 32
d_model = 4096
n_head = 32
n_kv_head = 32
ffn_hidden = 10922
max_seq_len = 2048
norm = "layernorm"
norm_eps = 1e-5
qkv_bias = True
attn_out_bias = True
ffn_bias = True
rotary_dim = 32
rope_theta = 10000.0
tie_embeddings = True
# muP: base width 256, width multiplier 4096 / 256 = 16, i.e. 0.0625
init_truncate = 2.0            # truncated normal at +-2 sigma
init_std = 0.01825
init_std_embed = 0.073
init_std_out = 0.00228125
embed_mult = 14.6
logit_mult = 0.13875           # 2.22 x 0.0625
qk_scale_by_d = True           # attention scores scaled by 1/128, not 1/sqrt(128)
hidden_lr_mult = 0.0625

seq_len = 2048
global_batch_size = 2112       # 2112 x 2048 = 4.33M tokens per step
batch_size = 1
max_steps = 79_721             # phase 1
lr = 0.012                     # muP base learning rate
min_lr = 0.00012408
warmup_steps = 86
schedule = "linear"
schedule_steps = 294_423       # 86 + 294,337: the line spans all three phases
beta1 = 0.9
beta2 = 0.95
eps = 1e-9
weight_decay = 0.1
grad_clip = 1.0

eval_interval = 1000
eval_seqs = 64
ckpt_interval = 1500

# CrystalCoder's three data phases, for a corpus whose sources carry these names (the phase-1
# run above trains on the first; a later phase sets its own FIM rate, applied to fim_sources):
# mixture = [(0, {"web": 1}),
#            (79721, {"web": 0.4, "starcoder": 0.6}, {"fim_rate": 0.9, "fim_spm_rate": 0.5}),
#            (173000, {"python": 0.5, "html": 0.2, "javascript": 0.2, "css": 0.1},
#             {"fim_rate": 0.3})]
# fim_sources = ["starcoder", "python", "html", "javascript", "css"]
