# a ~130M model in MAP-Neo's shape (head_dim 192, SwiGLU hidden 8 x d_model, RMSNorm, untied,
# 64k vocabulary) for one GPU: the bottom of the ladder neo_125m -> neo_1b -> neo7b.

out_dir = "out/neo_125m"
# the demo corpus through the pipeline (README, "The data pipeline"); any folder of
# .jsonl/.txt works as docs_dir
source_dir = "data/demo/raw"
clean_dir = "data/demo/clean"
docs_dir = "data/demo/dedup"
tokenizer = "data/demo/tokenizer_64k.tiktoken"
tokenizer_vocab = 63995
tokens_dir = "data/demo/tokens_64k"

vocab_size = 64256
n_layer = 6
d_model = 576
n_head = 3
head_dim = 192
ffn_hidden = 4608
max_seq_len = 4096
norm = "rmsnorm"
norm_eps = 1e-5

seq_len = 4096
batch_size = 8
global_batch_size = 64         # 262k tokens per step
max_steps = 10_000             # 2.6B tokens, ~20 per parameter
lr = 1e-3
min_lr = 1e-4
warmup_steps = 500
schedule = "cosine"
eval_interval = 500
eval_seqs = 64
ckpt_interval = 1000
