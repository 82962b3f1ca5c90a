# the default run: `python train.py` trains this tiny bilingual model on data/tiny
# (English prose, classical Chinese, Python) in a few minutes on a laptop CPU.
# every key of train.py's TrainConfig and model.py's ModelConfig can be set here or as --key=value.

out_dir = "out/toy"
docs_dir = "data/tiny"          # tokenized into tokens_dir on the first run (seconds)
tokens_dir = "data/tiny/tokens"
tokenizer = "bpe"               # a byte-level BPE trained on docs_dir
tokenizer_vocab = 4096

# model: MAP-Neo's shape (RMSNorm, SwiGLU, full rotary, untied), shrunk
vocab_size = 0                  # from the tokenizer: 4096 + 5 special tokens, padded to 4160
n_layer = 4
d_model = 128
n_head = 4
ffn_hidden = 384
max_seq_len = 256

# batch and schedule
seq_len = 256
batch_size = 16
max_steps = 400
lr = 3e-3
min_lr = 3e-4
warmup_steps = 30
schedule = "cosine"
weight_decay = 0.1

eval_interval = 100
log_interval = 20
ckpt_interval = 200
