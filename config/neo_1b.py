# a ~1B model in MAP-Neo's shape (head_dim 192, SwiGLU hidden 8 x d_model, RMSNorm, untied,
# 64k vocabulary) for one GPU, at sequence length 4096.

out_dir = "out/neo_1b"
# the demo corpus through the pipeline (README, "The data pipeline"); any folder of
# .jsonl/.txt works as docs_dir
source_dir = "data/demo/raw"
clean_dir = "data/demo/clean"
docs_dir = "data/demo/dedup"
tokenizer = "data/demo/tokenizer_64k.tiktoken"
tokenizer_vocab = 63995
tokens_dir = "data/demo/tokens_64k"

vocab_size = 64256
n_layer = 12
d_model = 1536
n_head = 8
head_dim = 192
ffn_hidden = 12288
max_seq_len = 4096
norm = "rmsnorm"
norm_eps = 1e-5

seq_len = 4096
batch_size = 4
global_batch_size = 128        # 524k tokens per step
max_steps = 38_000             # 20B tokens, ~20 per parameter
lr = 3e-4
min_lr = 3e-5
warmup_steps = 1000
schedule = "cosine"
eval_interval = 500
eval_seqs = 64
ckpt_interval = 1000
