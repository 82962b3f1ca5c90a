"""
Raw text -> tokenizer -> token shards and manifest -> the batch of every step.

    python data.py prepare [config.py] [--key=value ...]      raw_data -> data_dir (train.py runs it when needed)
    python data.py show --step S [config.py] [--key=value ...]  the text step S trains on, sequence by sequence
    python data.py show --ckpt out/toy/ckpt_0000100              the text of the step that checkpoint saved

The order of training samples is a pure function of (manifest, seed): batch(step, rank,
world_size) needs nothing else, so a resumed run, a run at another world size and `show`
all see the same data at the same step.
"""
import base64, gzip, hashlib, json, os, re, shutil, sys

import numpy as np
import tiktoken
from tqdm import tqdm

# gpt-4's split pattern, but digits one at a time, as MAP-Neo's tokenizer splits them
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
SPECIAL_TOKENS = [EOT, "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|pad|>"]  # ids right after the BPE ranks
MAGIC, VERSION, HEADER_BYTES = 20241124, 1, 32  # shard header: int64 magic, version, bytes per token, token count


class DataError(Exception):
    """Bad data on disk: the message names the file and what was expected."""


# -----------------------------------------------------------------------------
# documents

def iter_documents(root, problems):
    """Yield (source, text) from a folder (or one file) of .jsonl, .jsonl.gz and .txt files.
    A document's source is its "source" field, else the first path component under root
    (a file's name without extension, or a sub-folder's name). Bad lines go to problems."""
    if os.path.isfile(root):
        files = [root]
    else:
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    for path in files:
        rel = os.path.relpath(path, root) if path != root else os.path.basename(path)
        default_source = re.sub(r"(\.jsonl\.gz|\.jsonl|\.txt)$", "", rel.split(os.sep)[0])
        if path.endswith((".jsonl", ".jsonl.gz")):
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8", errors="replace") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)
                    except json.JSONDecodeError as e:
                        problems.append(f"{path}:{lineno}: not JSON ({e.msg})")
                        continue
                    if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                        problems.append(f"{path}:{lineno}: no string field 'text'")
                        continue
                    yield str(doc.get("source") or default_source), doc["text"]
        elif path.endswith(".txt"):
            raw = open(path, "rb").read()
            text = raw.decode("utf-8", errors="replace")
            if "\ufffd" in text and "\ufffd".encode() not in raw:
                problems.append(f"{path}: invalid UTF-8, bad bytes replaced by U+FFFD")
            yield default_source, text


# -----------------------------------------------------------------------------
# tokenizer: a .tiktoken file of BPE ranks (+ a .json beside it with the split pattern and the
# special tokens), or the name of a tiktoken encoding

def train_tokenizer(texts, vocab_size, path):
    import rustbpe
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size, pattern=SPLIT_PATTERN)
    with open(path, "w") as f:
        for token, rank in sorted(tok.get_mergeable_ranks(), key=lambda x: x[1]):
            f.write(f"{base64.b64encode(bytes(token)).decode()} {rank}\n")
    with open(path + ".json", "w") as f:
        json.dump(dict(pat_str=tok.get_pattern(), special_tokens=SPECIAL_TOKENS), f, indent=1)
    enc = load_tokenizer(path)
    if enc.n_vocab - len(SPECIAL_TOKENS) < vocab_size:
        print(f"warning: the BPE stopped at {enc.n_vocab - len(SPECIAL_TOKENS)} of the {vocab_size} tokens asked: "
              "the text has no more pairs to merge", file=sys.stderr)
    return enc


def load_tokenizer(spec):
    """A tiktoken.Encoding from a .tiktoken path or a tiktoken encoding name (e.g. cl100k_base)."""
    if spec.endswith(".tiktoken") or os.path.exists(spec):
        if not os.path.exists(spec):
            raise DataError(f"tokenizer file not found: {spec}")
        ranks = {}
        for lineno, line in enumerate(open(spec), 1):
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError:
                raise DataError(f"{spec}:{lineno}: expected '<base64 token> <rank>', got {line.strip()!r}") from None
        side = json.load(open(spec + ".json")) if os.path.exists(spec + ".json") else {}
        specials = side.get("special_tokens", SPECIAL_TOKENS)
        return tiktoken.Encoding(os.path.basename(spec), pat_str=side.get("pat_str", SPLIT_PATTERN), mergeable_ranks=ranks,
                                 special_tokens={s: len(ranks) + i for i, s in enumerate(specials)})
    try:
        enc = tiktoken.get_encoding(spec)
    except Exception as e:
        raise DataError(f"cannot load tokenizer {spec!r}: not a .tiktoken file, and tiktoken says: {e} "
                        "(named encodings download their file on first use)") from None
    if EOT not in enc.special_tokens_set:
        raise DataError(f"tokenizer {spec!r} has no {EOT} token")
    return enc


# -----------------------------------------------------------------------------
# shards and manifest

def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_shard(path, tokens):
    header = np.array([MAGIC, VERSION, tokens.itemsize, len(tokens)], dtype="<i8")
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(tokens.dtype.newbyteorder("<")).tobytes())


def read_shard(path):
    """The tokens of a shard as a read-only memmap, after checking its header and size."""
    if not os.path.exists(path):
        raise DataError(f"{path}: shard missing")
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise DataError(f"{path}: truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, version, itemsize, count = np.fromfile(path, dtype="<i8", count=4).tolist()
    if magic != MAGIC:
        raise DataError(f"{path}: not a nano360 token shard (magic {magic}, expected {MAGIC})")
    if version != VERSION or itemsize not in (2, 4):
        raise DataError(f"{path}: unsupported shard version {version} / token size {itemsize} bytes")
    if size != HEADER_BYTES + count * itemsize:
        raise DataError(f"{path}: truncated or corrupt: the header says {count:,} tokens "
                        f"({HEADER_BYTES + count * itemsize:,} bytes) but the file has {size:,} bytes")
    return np.memmap(path, dtype="<u2" if itemsize == 2 else "<u4", mode="r", offset=HEADER_BYTES, shape=(count,))


def load_manifest(data_dir, verify=True):
    """manifest.json of data_dir, every shard's header checked and, with verify, its sha256."""
    path = os.path.join(data_dir, "manifest.json")
    if not os.path.exists(path):
        raise DataError(f"{path}: no manifest (run `python data.py prepare` to build {data_dir})")
    try:
        manifest = json.load(open(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    for s in tqdm(manifest["shards"], desc="checking shards", disable=not verify or len(manifest["shards"]) < 50):
        shard = os.path.join(data_dir, s["file"])
        n = len(read_shard(shard))
        if n != s["tokens"]:
            raise DataError(f"{shard}: holds {n:,} tokens, {path} says {s['tokens']:,}")
        digest = sha256_file(shard) if verify else s["sha256"]
        if digest != s["sha256"]:
            raise DataError(f"{shard}: sha256 {digest} does not match {path} ({s['sha256']}): "
                            "the shard changed since it was written")
    manifest["sha256"] = sha256_file(path)  # what checkpoints record
    return manifest


def prepare(raw_data, data_dir, tokenizer="bpe", vocab_size=4096, val_frac=0.05, shard_tokens=100_000_000):
    """Tokenize the documents under raw_data into data_dir: the tokenizer, one train and one val
    split per source (val is the last val_frac of each source's tokens), and manifest.json."""
    problems, by_source = [], {}
    for source, text in tqdm(iter_documents(raw_data, problems), desc=f"reading {raw_data}", unit=" docs"):
        by_source.setdefault(source, []).append(text)
    for p in problems[:20]:
        print(f"warning: {p}", file=sys.stderr)
    if len(problems) > 20:
        print(f"warning: ... and {len(problems) - 20} more problems in {raw_data}", file=sys.stderr)
    if not by_source:
        raise DataError(f"{raw_data}: no documents found (looked for .jsonl, .jsonl.gz and .txt files)")
    tmp = data_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if tokenizer == "bpe":
        enc = train_tokenizer((t for texts in by_source.values() for t in texts), vocab_size,
                              os.path.join(tmp, "tokenizer.tiktoken"))
        tok_entry = "tokenizer.tiktoken"
    elif os.path.exists(tokenizer):  # a user's .tiktoken file: copied, so data_dir is self-contained
        for ext in ("", ".json"):
            if os.path.exists(tokenizer + ext):
                shutil.copy(tokenizer + ext, os.path.join(tmp, "tokenizer.tiktoken" + ext))
        enc, tok_entry = load_tokenizer(os.path.join(tmp, "tokenizer.tiktoken")), "tokenizer.tiktoken"
    else:
        enc, tok_entry = load_tokenizer(tokenizer), tokenizer
    dtype = np.uint16 if enc.n_vocab <= 65536 else np.uint32
    shards, sources = [], {}
    for source in sorted(by_source):
        texts = by_source[source]
        ids = enc.encode_ordinary_batch(texts)
        tokens = np.fromiter((t for doc in ids for t in doc + [enc.eot_token]), dtype=dtype,
                             count=sum(len(d) + 1 for d in ids))
        cut = len(tokens) - max(1, int(len(tokens) * val_frac)) if val_frac > 0 else len(tokens)
        sources[source] = dict(documents=len(texts), characters=sum(map(len, texts)),
                               train_tokens=int(cut), val_tokens=int(len(tokens) - cut))
        for split, part in (("train", tokens[:cut]), ("val", tokens[cut:])):
            for k, a in enumerate(range(0, len(part), shard_tokens)):
                name = f"{split}_{re.sub(r'[^A-Za-z0-9_.-]', '_', source)}_{k:04d}.bin"
                write_shard(os.path.join(tmp, name), part[a:a + shard_tokens])
                shards.append(dict(file=name, split=split, source=source, tokens=int(len(part[a:a + shard_tokens])),
                                   sha256=sha256_file(os.path.join(tmp, name))))
    manifest = dict(version=VERSION, prepared_with=dict(raw_data=raw_data, tokenizer=tokenizer, tokenizer_vocab=vocab_size,
                                                        val_frac=val_frac), tokenizer=tok_entry, n_vocab=enc.n_vocab,
                    eot=enc.eot_token, dtype=np.dtype(dtype).name, val_frac=val_frac, sources=sources,
                    shards=shards, problems=len(problems))
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    shutil.rmtree(data_dir, ignore_errors=True)
    os.replace(tmp, data_dir)  # a crash before this line leaves no half-written data_dir
    for source, s in sources.items():
        print(f"{source}: {s['documents']} documents, {s['train_tokens']:,} train + {s['val_tokens']:,} val tokens, "
              f"{s['characters'] / (s['train_tokens'] + s['val_tokens']):.2f} characters per token")
    return load_manifest(data_dir)


def tokenizer_of(data_dir, manifest):
    t = manifest["tokenizer"]
    return load_tokenizer(os.path.join(data_dir, t) if t.endswith(".tiktoken") else t)


# -----------------------------------------------------------------------------
# sample order: a keyed pseudo-random permutation per epoch, computed for just the positions asked

def _mix(x):
    # splitmix64's finaliser on uint64 arrays (wrapping arithmetic is the point)
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def permute(i, n, seed, epoch):
    """Positions i of a pseudo-random permutation of range(n) keyed by (seed, epoch): a 4-round
    Feistel network on the smallest even number of bits covering n, cycle-walking past values
    >= n. O(len(i)) work, so a 550M-sample epoch needs no 4 GB permutation table."""
    half = max(1, ((int(n) - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = _mix(np.array([seed, epoch, 0, 0], dtype=np.uint64) + np.arange(4, dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019))
    keys = _mix(keys ^ _mix(keys[:1] ^ keys[1:2]))
    x = np.asarray(i, dtype=np.uint64).copy()
    todo = np.ones(len(x), dtype=bool)
    while todo.any():
        left, right = x[todo] >> np.uint64(half), x[todo] & mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & mask)
        x[todo] = (left << np.uint64(half)) | right
        todo = x >= np.uint64(n)
    return x.astype(np.int64)


class Batches:
    """The training samples: windows of seq_len + 1 tokens at multiples of seq_len in every train
    shard, visited in a new pseudo-random order each epoch, global_batch of them per step."""

    def __init__(self, data_dir, seq_len, global_batch, seed, verify=True):
        self.manifest = load_manifest(data_dir, verify)
        self.seq_len, self.global_batch, self.seed = seq_len, global_batch, seed
        if global_batch <= 0:
            raise ValueError(f"global_batch must be positive, got {global_batch}")
        entries = [s for s in self.manifest["shards"] if s["split"] == "train"]
        self.shards = [read_shard(os.path.join(data_dir, s["file"])) for s in entries]
        self.files, self.sources = [s["file"] for s in entries], [s["source"] for s in entries]
        self.offsets = np.cumsum([0] + [max(0, (len(t) - 1) // seq_len) for t in self.shards])
        self.n = int(self.offsets[-1])
        if self.n == 0:
            raise DataError(f"{data_dir}: no train shard holds seq_len + 1 = {seq_len + 1} tokens")

    def sample_ids(self, step, rank=0, world_size=1):
        """The samples of rank's share of step's global batch: disjoint across ranks, without
        replacement within an epoch."""
        if self.global_batch % world_size:
            raise ValueError(f"global batch of {self.global_batch} sequences cannot be split over {world_size} ranks")
        per_rank = self.global_batch // world_size
        pos = step * self.global_batch + rank * per_rank + np.arange(per_rank, dtype=np.int64)
        ids = np.empty_like(pos)
        for epoch in np.unique(pos // self.n):
            sel = pos // self.n == epoch
            ids[sel] = permute(pos[sel] % self.n, self.n, self.seed, int(epoch))
        return ids

    def locate(self, ids):
        """(shard index, first token) of each sample."""
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        return shard, (ids - self.offsets[shard]) * self.seq_len

    def tokens(self, ids):
        shard, start = self.locate(ids)
        return np.stack([self.shards[s][a:a + self.seq_len + 1] for s, a in zip(shard, start)]).astype(np.int64)

    def batch(self, step, rank=0, world_size=1):
        """(global_batch / world_size, seq_len + 1) int64 tokens: inputs are [:, :-1], targets [:, 1:]."""
        import torch
        return torch.from_numpy(self.tokens(self.sample_ids(step, rank, world_size)))


def doc_ids(tokens, eot):
    """Document ids (B, T) of packed tokens (B, T), for attention masking: the end-of-text token
    that closes one document opens the next id, so the position that predicts a document's
    first token sees nothing of the document before it."""
    return (tokens == eot).cumsum(1)


def val_sequences(data_dir, manifest, seq_len, max_seqs=0):
    """{source: (n, seq_len + 1) int64} of consecutive windows of each source's val split."""
    out = {}
    for s in manifest["shards"]:
        if s["split"] == "val":
            t = read_shard(os.path.join(data_dir, s["file"]))
            n = (len(t) - 1) // seq_len
            rows = [t[j * seq_len:j * seq_len + seq_len + 1] for j in range(n)]
            out.setdefault(s["source"], []).extend(rows)
    return {src: np.stack(r[:max_seqs or None]).astype(np.int64) for src, r in out.items() if r}


# -----------------------------------------------------------------------------
# command line

def show(cfg, step, world_size):
    import train
    batches = Batches(cfg.data_dir, cfg.seq_len, train.global_batch(cfg, world_size), cfg.seed, verify=False)
    enc = tokenizer_of(cfg.data_dir, batches.manifest)
    ids = batches.sample_ids(step)
    shard, start = batches.locate(ids)
    for j, (i, s, a) in enumerate(zip(ids, shard, start)):
        toks = batches.shards[s][a:a + cfg.seq_len + 1].tolist()
        print(f"=== step {step} · sequence {j}/{len(ids)} · sample {i} · source {batches.sources[s]} · "
              f"tokens {a}..{a + len(toks)} of {batches.files[s]} ===")
        print(enc.decode(toks))


def pop_flag(args, flag):
    """Remove `flag=V` or `flag V` from args and return V (None when absent)."""
    for k, a in enumerate(args):
        if a.startswith(flag + "="):
            return args.pop(k).split("=", 1)[1]
        if a == flag:
            if k + 1 == len(args):
                import train
                raise train.ConfigError(f"{flag} needs a value")
            args.pop(k)
            return args.pop(k)
    return None


def main(argv):
    import train  # the config system lives in train.py
    if not argv or argv[0] not in ("prepare", "show"):
        print(__doc__.strip())
        return 2
    cmd, rest = argv[0], list(argv[1:])
    step, ckpt = pop_flag(rest, "--step"), pop_flag(rest, "--ckpt")
    if ckpt:
        meta = train.read_checkpoint_meta(ckpt)
        cfg, _ = train.config_from_dict(meta["config"])
        step = meta["step"] - 1 if step is None else step  # the last step before the save
        world_size = meta["world_size"]
    else:
        cfg, _ = train.load_config(rest)
        world_size = cfg.world_size  # the run's, when its global_batch_size is 0 (batch_size x ranks)
    if cmd == "prepare":
        prepare(cfg.raw_data, cfg.data_dir, cfg.tokenizer, cfg.tokenizer_vocab, cfg.val_frac)
        return 0
    if step is None or not str(step).isdigit():
        raise train.ConfigError(f"show needs --step S (a step number) or --ckpt DIR, got step={step!r}")
    show(cfg, int(step), world_size)
    return 0


if __name__ == "__main__":
    import train
    try:
        sys.exit(main(sys.argv[1:]))
    except (DataError, train.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # `python data.py show ... | head`
        sys.exit(0)
