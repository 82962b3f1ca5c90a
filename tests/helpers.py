"""What the tests and the benchmarks share: paths, a shrunken toy config, a free port, the
planted near-duplicates built from real text, small references for dedup's pieces, and the
payloads of the trust scenarios. Benchmarks import this module (never a test file):

    sys.path.insert(0, os.path.join(ROOT, "tests")); import helpers
"""
import json, os, random, socket, sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "data", "tiny")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def tokenize_tiny(out, vocab=512, val_frac=0.05, docs=TINY, tokenizer="bpe"):
    """docs (data/tiny by default) tokenized into out, with a BPE of vocab tokens trained on them
    (or the tokenizer given); the manifest."""
    import data
    from config import TrainConfig
    data.tokenize(TrainConfig(docs_dir=str(docs), tokens_dir=str(out), tokenizer=str(tokenizer),
                              tokenizer_vocab=vocab, val_frac=val_frac))
    return data.load_manifest(str(out))


def small_args(tokens_dir, out_dir, *overrides):
    """argv for train.main: the toy config shrunk so a step takes milliseconds."""
    return [os.path.join(ROOT, "config", "toy.py"), f"--tokens_dir={tokens_dir}", f"--docs_dir={TINY}",
            "--tokenizer_vocab=512", f"--out_dir={out_dir}", "--n_layer=2", "--d_model=32", "--n_head=2",
            "--ffn_hidden=64", "--seq_len=32", "--max_seq_len=64", "--batch_size=4", "--warmup_steps=2",
            "--log_interval=1", "--sample_tokens=0", "--eval_seqs=4", *overrides]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -----------------------------------------------------------------------------
# planted near-duplicates: real text (data/tiny, data/langid) with edits of known kinds

def load(name):
    with open(f"{TINY}/{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def chunks(texts, rng, lo=1000, hi=4000):
    """Real text cut at paragraph (or, where a text has no blank lines, line) boundaries into
    pieces of lo..hi UTF-8 bytes (log-uniform) with at least two units each; returns
    (text, separator)."""
    out = []
    for text in texts:
        sep = "\n\n" if text.count("\n\n") >= 3 else "\n"
        units = [u for u in text.split(sep) if u.strip()]
        cur, target = [], int(lo * (hi / lo) ** rng.random())
        for u in units:
            cur.append(u)
            if len(sep.join(cur).encode()) >= target and len(cur) >= 2:
                out.append((sep.join(cur), sep))
                cur, target = [], int(lo * (hi / lo) ** rng.random())
    return out


def is_cjk(ch):
    return "\u4e00" <= ch <= "\u9fff"


BOILER_TOP = {
    "en": ["Posted on 2023-04-01 by admin", "Home > Books > Classics", "Last updated: March 3, 2021"],
    "zh": ["发布时间：2023-04-01 来源：本站", "首页 > 古籍 > 经典", "作者：admin 阅读：1024次"]}
BOILER_BOTTOM = {
    "en": ["Share this article", "Copyright 2023 Example Media. All rights reserved.",
           "We use cookies to improve your experience. By continuing to browse this site you agree "
           "to our use of cookies. Accept"],
    "zh": ["分享到：微信 微博 QQ空间", "版权所有 © 2023 示例网 保留所有权利",
           "本网站使用Cookie以提升您的浏览体验，继续浏览即表示您同意我们使用Cookie。"]}


def edit_words(text, lang, rate, rng, vocab):
    """rate of the words replaced (Chinese: rate / 1.5 of the CJK characters, a word being ~1.5)."""
    if lang == "en":
        words = text.split(" ")
        for i in rng.sample(range(len(words)), max(1, round(rate * len(words)))):
            words[i] = rng.choice(vocab)
        return " ".join(words)
    chars = list(text)
    pos = [i for i, ch in enumerate(chars) if is_cjk(ch)]
    for i in rng.sample(pos, max(1, round(rate * len(pos) / 1.5))):
        chars[i] = rng.choice(vocab)
    return "".join(chars)


def move_paragraph(text, sep, rng):
    units = text.split(sep)
    unit = units.pop(rng.randrange(len(units)))
    units.insert(rng.randrange(len(units) + 1), unit)
    return sep.join(units)


EDITS = ("1%", "3%", "5%", "moved", "boiler", "1%+moved+boiler")


def planted_edits(seed=7):
    """{set: (documents, family of each, [(original, variant, edit)])}: real text (data/tiny's
    English and Chinese cut into 1-4 KB pieces, and data/langid's Chinese technical pages, full
    of commands and identifiers), each original with one variant per edit in EDITS: words
    changed, a paragraph moved, a boilerplate line added, and all three at 1%."""
    rng = random.Random(seed)
    en, zh = load("en"), load("zh")
    with open(os.path.join(ROOT, "data", "langid", "langid.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    tech = [r["text"] for r in rows if r["kind"] in ("zh-tech", "zh-man", "markdown-zh") and len(r["text"]) > 800]
    vocab = {"en": sorted({w for t in en for w in t.split() if w.isalpha()}),
             "zh": sorted({ch for t in zh for ch in t if is_cjk(ch)})}
    sets = {"en": chunks(en, rng), "zh": chunks(zh, rng),
            "zh-tech": [(t, "\n\n" if t.count("\n\n") >= 2 else "\n") for t in tech]}
    out = {}
    for name, originals in sets.items():
        lang = name[:2]
        boiler = BOILER_TOP[lang] + BOILER_BOTTOM[lang]
        docs, family, pairs = [t for t, _ in originals], list(range(len(originals))), []
        for f, (text, sep) in enumerate(originals):
            for edit in EDITS:
                if edit.endswith("%"):
                    v = edit_words(text, lang, float(edit[:-1]) / 100, rng, vocab[lang])
                elif edit == "moved":
                    v = move_paragraph(text, sep, rng)
                elif edit == "boiler":
                    v = rng.choice(boiler) + sep + text
                else:  # (the boilerplate is drawn first)
                    line = rng.choice(boiler)
                    v = line + sep + move_paragraph(edit_words(text, lang, 0.01, rng, vocab[lang]), sep, rng)
                pairs.append((f, len(docs), edit))
                docs.append(v)
                family.append(f)
        out[name] = docs, np.array(family), pairs
    return out


def kept_roots(n, result):
    """The kept document each of n documents was merged into (exact or near) by dedup_texts."""
    into = {i: k for i, reason, k in result["removed"] if reason in ("exact", "near")}
    out = []
    for i in range(n):
        while i in into:
            i = into[i]
        out.append(i)
    return np.array(out)


# -----------------------------------------------------------------------------
# a released model's folder: a Llama tokenizer.json (SentencePiece-style BPE: "▁" for spaces,
# one prepended, <0xNN> byte fallback, <s> added by its post-processor), laid out as LLaMA's is

def llama_tokenizer(folder, vocab_size=700):
    """Write tokenizer.json + tokenizer_config.json as LLaMA-2 / Amber ship them, the merges
    learnt by tokenizers' trainer from data/tiny; returns the folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    t.train_from_iterator(sum((load(n) for n in ("en", "zh", "code")), []),
                          trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, limit_alphabet=150))
    learnt = json.loads(t.to_str())["model"]
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)])}
    for tok, _ in sorted(learnt["vocab"].items(), key=lambda x: x[1]):
        vocab.setdefault(tok, len(vocab))
    def seq(*parts):
        return [{"SpecialToken": {"id": "<s>", "type_id": i}} if p == "<s>" else {"Sequence": {"id": p, "type_id": i}}
                for i, p in parts]
    spec = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [dict(id=i, content=c, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
                         for i, c in enumerate(["<unk>", "<s>", "</s>"])],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                           {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing", "single": seq((0, "<s>"), (0, "A")),
                           "pair": seq((0, "<s>"), (0, "A"), (1, "<s>"), (1, "B")),
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "vocab": vocab,
                  "merges": learnt["merges"]}}
    os.makedirs(folder, exist_ok=True)
    json.dump(spec, open(os.path.join(folder, "tokenizer.json"), "w"), ensure_ascii=False)
    # PreTrainedTokenizerFast: transformers runs the file as written (its LlamaTokenizer class rebuilds
    # the pipeline with legacy=False rules, which differ where a text starts with a space)
    json.dump(dict(tokenizer_class="PreTrainedTokenizerFast", bos_token="<s>", eos_token="</s>", unk_token="<unk>"),
              open(os.path.join(folder, "tokenizer_config.json"), "w"))
    return folder


# -----------------------------------------------------------------------------
# dedup's pieces put together the simple way, for the tests that check them

def exact_key(text):
    """A 128-bit hash of norm_for_dedup(text): equal for documents that differ only in case,
    punctuation and spacing."""
    import dedup
    return dedup._key128(dedup.norm_for_dedup(text)).tobytes()


def lsh_clusters(signatures, bands=9, rows=13):
    """For each document (row of signatures), the smallest index in its LSH connected component:
    candidates from every band, joined without the signature check."""
    import dedup
    h, docs = dedup.band_hashes(signatures, bands, rows), np.arange(len(signatures), dtype=np.uint64)
    pairs = np.concatenate([dedup.first_pairs(h[:, [b]], docs) for b in range(bands)])
    rep = np.arange(len(signatures), dtype=np.int64)
    if len(pairs):
        nodes, root = dedup.roots(np.unique(pairs, axis=0))
        rep[nodes.astype(np.int64)] = root.astype(np.int64)
    return rep


# -----------------------------------------------------------------------------
# the trust scenarios: what a hostile checkpoint holds, and how a command's outcome is told

ONE_LINE = ("ConfigError", "DataError", "CheckpointError", "TrainingError")  # what run_command prints in one line


def outcome(fn):
    """'ok', 'error: <message>' for an error printed in one line, or 'traceback: <type>: ...'."""
    try:
        fn()
        return "ok"
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001: classifying is the point (DCP's errors are BaseExceptions)
        kind = "error" if type(e).__name__ in ONE_LINE else f"traceback: {type(e).__name__}"
        return f"{kind}: {' '.join(str(e).split())}"


def sha(path):
    import hashlib
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def reseal(ckpt):
    """Make the checksums match planted files, as whoever can write the files can (sums are no signature)."""
    meta_path = os.path.join(ckpt, "meta.json")
    meta = json.load(open(meta_path))
    if "files" in meta:
        meta["files"] = {n: dict(bytes=os.path.getsize(os.path.join(ckpt, n)), sha256=sha(os.path.join(ckpt, n)))
                         for n in sorted(os.listdir(ckpt)) if n not in ("meta.json", "DONE")}
        json.dump(meta, open(meta_path, "w"), indent=1)
    if open(os.path.join(ckpt, "DONE")).read().strip():
        open(os.path.join(ckpt, "DONE"), "w").write(json.dumps({"meta.json": sha(meta_path)}))


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def dotted_global(marker):
    """A protocol-4 pickle calling torch.distributed.checkpoint.filesystem.os.system: a module the
    old allow-list admitted, an attribute path it did not look at."""
    def s(b):
        return b"\x8c" + bytes([len(b)]) + b  # SHORT_BINUNICODE
    return (b"\x80\x04" + s(b"torch.distributed.checkpoint.filesystem") + s(b"os.system") + b"\x93" +
            s(f"touch {marker}".encode()) + b"\x85R.")


def plant_entries(ckpt, marker):
    """Rewrite the DCP files with a model tensor (and any optimizer hyperparameter) replaced by a pickle that runs code."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save(ckpt, os.path.join(ckpt, "..", "full.pt"))
    state = torch.load(os.path.join(ckpt, "..", "full.pt"), weights_only=False)  # our own file
    first = sorted(state["model"])[0]
    state["model"][first] = Evil(marker)
    for group in state["optim"].get("param_groups", []):
        group["weight_decay"] = Evil(marker)
    for f in os.listdir(ckpt):
        if f.endswith(".distcp") or f == ".metadata":
            os.remove(os.path.join(ckpt, f))
    dcp.save(state, checkpoint_id=ckpt)


def resume_args(tokens_dir, out, *more):
    return small_args(tokens_dir, out, "--max_steps=3", "--ckpt_interval=1", "--keep_last=5", "--eval_interval=100",
                      *more)


def _train(*argv):
    import train
    return train.main(list(argv))


def _eval(*argv):
    import eval as evaluate
    return evaluate.main(list(argv))


# every command that reads a checkpoint: (tokens_dir, out_dir, checkpoint) -> its run
COMMANDS = {
    "train.py --resume": lambda tiny, out, ckpt: _train(*resume_args(tiny, out, f"--resume={ckpt}")),
    "train.py --consolidate": lambda tiny, out, ckpt: _train("--consolidate", ckpt, str(out / "c.pt")),
    "eval.py sweep": lambda tiny, out, ckpt: _eval(ckpt, "--seqs=2"),
    "eval.py sample": lambda tiny, out, ckpt: _eval("sample", ckpt, "--tokens=2"),
    "eval.py export": lambda tiny, out, ckpt: _eval("export", ckpt, str(out / "hf")),
}
