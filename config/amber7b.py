# Amber-7B (LLM360, arXiv 2312.06550): the LLaMA-7B architecture trained on 1.26T tokens.
# Figures from the paper and the released configs (LLM360/amber-train).
# `python train.py config/amber7b.py --dry_run --world_size=224` prints the plan of the
# original run.

out_dir = "out/amber7b"
# bring your own corpus: python data.py tokenize config/amber7b.py --docs_dir=DIR
docs_dir = ""
tokens_dir = "data/amber/tokens"
tokenizer = "bpe"
tokenizer_vocab = 31995        # + 5 special tokens = 32000, LLaMA's vocabulary size
hash_shards = False            # hashing terabytes at every start costs hours
val_frac = 0.001               # held out per source; the evaluation reads eval_seqs of it

vocab_size = 32000
n_layer = 32
d_model = 4096
n_head = 32
n_kv_head = 32
ffn_hidden = 11008
max_seq_len = 2048
norm = "rmsnorm"
norm_eps = 1e-6
rope_theta = 10000.0
tie_embeddings = False
init_std = 0.02

seq_len = 2048
global_batch_size = 2240       # 2240 x 2048 = 4.59M tokens per step
batch_size = 2                 # per GPU; 2240 splits evenly over 8, 16, 32, 56, 112 or 224 GPUs
                               # at this size
max_steps = 274_658            # 1.26T tokens / 4.59M per step
lr = 3e-4
min_lr = 3e-5
warmup_steps = 2000
schedule = "cosine"
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.1
weight_decay_all = True        # Amber decays every parameter
grad_clip = 1.0

eval_interval = 1000
eval_seqs = 64
log_interval = 10
ckpt_interval = 763            # 360 checkpoints over the run, as Amber released
keep_every = 763               # and keep them all
