# a small bilingual model on the demo corpus: English books, speeches and Python docs, Chinese
# classics and poetry, Python source (~66 MB). First build the data (README, "The data pipeline"):
#   python curate.py fetch-demo && python curate.py pipeline config/demo_small.py
#   (clean, dedup, train-tokenizer, then python data.py tokenize: each also a command of its own)
# then: python train.py config/demo_small.py
#   (one GPU: minutes; a laptop CPU: hours, try --max_steps=200)

out_dir = "out/demo_small"
source_dir = "data/demo/raw"       # python curate.py fetch-demo writes it
clean_dir = "data/demo/clean"
docs_dir = "data/demo/dedup"
tokenizer = "data/demo/tokenizer_16k.tiktoken"
tokenizer_vocab = 16379           # + 5 special tokens = 16384
tokenizer_sample = 30_000_000
tokens_dir = "data/demo/tokens_16k"
val_frac = 0.01

n_layer = 6
d_model = 384
n_head = 6
ffn_hidden = 1024
max_seq_len = 512

seq_len = 512
batch_size = 32
max_steps = 3000                  # ~49M tokens, about 1.5 epochs of the deduplicated corpus
lr = 2e-3
min_lr = 2e-4
warmup_steps = 200
eval_interval = 250
eval_seqs = 32
log_interval = 25
ckpt_interval = 500
keep_every = 500                  # every checkpoint kept, for the release (LLM360 kept all 360)

# MAP-Neo's two phases in miniature: a fundamental phase, then a decay phase with a new mix
# (here: more code and Chinese); train.py prints how many epochs of each source the run takes
mixture = [(0, {"en_books": 3, "en_speeches": 1, "en_docs": 1,
                "zh_poetry": 3, "zh_classics": 1, "code": 2}),
           (2500, {"en_books": 1, "en_docs": 1, "zh_poetry": 2, "zh_classics": 2, "code": 3})]
fim_rate = 0.5                    # fill-in-the-middle on half of the code documents
