# MAP-Neo-7B (arXiv 2405.19327): a bilingual English/Chinese LLaMA-style model, 4.5T tokens at
# 8k context, head_dim 192. Figures from the paper and the released configs.
# The paper gives the sequence length but not the number of sequences per step; 1536 x 8192
# (12.6M tokens) is our reading: 4.5T tokens then take ~358k steps, matching its ~365k-step cosine.

out_dir = "out/neo7b"
docs_dir = ""
tokens_dir = "data/neo/tokens"
tokenizer = "bpe"
tokenizer_vocab = 63995        # + 5 special tokens = 64000, MAP-Neo's vocabulary
hash_shards = False
val_frac = 0.001               # held out per source; the evaluation reads eval_seqs of it

vocab_size = 64256             # 64000 padded
n_layer = 28
d_model = 3072
n_head = 16
n_kv_head = 16
head_dim = 192
ffn_hidden = 24576
max_seq_len = 8192
norm = "rmsnorm"
norm_eps = 1e-5
rope_theta = 10000.0
tie_embeddings = False
init_std = 0.02

seq_len = 8192
global_batch_size = 1536
batch_size = 1
max_steps = 358_000            # 4.5T tokens
lr = 2e-4
min_lr = 2e-5
warmup_steps = 2000
# the fundamental phase is a cosine over 365k steps; the decay phase (the last 62k steps,
# ~0.78T tokens) decays exponentially from where the cosine stands, half-life 31k steps,
# floored at min_lr. In MAP-Neo it also switches to a new data mixture (the `mixture` lines below).
schedule = "cosine_exp"
schedule_steps = 365_000
decay_steps = 62_000
beta1 = 0.9
beta2 = 0.95
eps = 1e-8
weight_decay = 0.1
grad_clip = 1.0

eval_interval = 1000
eval_seqs = 64
ckpt_interval = 2384           # MAP-Neo's checkpoint interval, with full optimizer state
keep_every = 2384

# MAP-Neo's fundamental phase and decay phase (new mix from max_steps - decay_steps), for a
# corpus whose sources carry these names; the first mix follows the paper (~52% web, ~22% code,
# the rest papers and books), the decay mix is illustrative (the paper does not give it):
# mixture = [(0, {"web_en": 0.37, "web_zh": 0.15, "code": 0.22, "papers": 0.13, "books": 0.13}),
#            (296000, {"web_en": 0.25, "web_zh": 0.15, "code": 0.30, "papers": 0.15,
#                      "books": 0.15})]
