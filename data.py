"""
What a training run reads: documents -> tokenizer -> token shards and manifest -> the batch
of every step. Corpus curation (cleaning, dedup, the demo corpus) is curate.py.

    python data.py tokenize CONFIG [--key=value ...]   raw_data -> data_dir: shards + manifest (alias: prepare;
                                                       train.py runs it when data_dir is missing)
    python data.py show --step S [CONFIG] [--key=value ...]  the text step S trains on, sequence by sequence
    python data.py show --ckpt out/toy/ckpt_0000100 [--step S]  the text of the step that checkpoint saved

The order of training samples is a pure function of (manifest, mixture, seed): batch(step,
rank, world_size) needs nothing else, so a resumed run, a run at another world size and
`show` all see the same data at the same step.
"""
import base64, gzip, hashlib, json, os, re, shutil, sys, time

import numpy as np
import tiktoken
from tqdm import tqdm

from config import ConfigError, config_from_dict, global_batch, load_config, pop_flag, run_command


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
# folders written whole (token shards, curation stages, checkpoints): under a temporary name
# beside the final one, then DONE, then renamed, so a crash never leaves a half-written folder
# under the final name, and a folder with DONE is complete

DONE = "DONE"


def tmp_dir(final, create=True):
    """A new, empty folder beside final (.tmp_<name>) to write final's contents in (only its
    name with create=False: the ranks that write into the folder rank 0 made)."""
    final = final.rstrip(os.sep)
    tmp = os.path.join(os.path.dirname(final), ".tmp_" + os.path.basename(final))
    if create:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    return tmp


def commit_dir(tmp, final):
    """Complete a folder written in tmp: its files on disk (so a power cut cannot reorder them),
    then DONE, then tmp renamed to final, replacing an older final."""
    for d, _, files in os.walk(tmp):
        for name in files:
            with open(os.path.join(d, name), "rb+") as f:
                os.fsync(f.fileno())
    open(os.path.join(tmp, DONE), "w").close()
    final = final.rstrip(os.sep)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def is_done(path):
    return os.path.exists(os.path.join(path, DONE))


def read_meta(ckpt):
    """meta.json of a complete checkpoint (train.py writes it): the run's config, the step, the
    data position, the manifest's sha256."""
    if not os.path.isdir(ckpt):
        raise ConfigError(f"checkpoint not found: {ckpt}")
    if not is_done(ckpt):
        raise ConfigError(f"{ckpt}: not a complete checkpoint (no {DONE} marker)")
    path = os.path.join(ckpt, "meta.json")
    try:
        return json.load(open(path))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e})") from None


# -----------------------------------------------------------------------------
# tokenizer: a .tiktoken file of BPE ranks (+ a .json beside it with the split pattern and the
# special tokens, appended after the ranks), or the name of a tiktoken encoding

def train_tokenizer(texts, vocab_size, path):
    """A byte-level BPE of vocab_size tokens (plus SPECIAL_TOKENS) learnt from texts by rustbpe,
    written to path (.tiktoken) and path.json."""
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


def read_tiktoken(path):
    """(ranks {bytes: rank}, split pattern, special tokens {name: id}) of a .tiktoken file."""
    if not os.path.exists(path):
        raise DataError(f"tokenizer file not found: {path}")
    ranks = {}
    for lineno, line in enumerate(open(path), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected '<base64 token> <rank>', got {line.strip()!r}") from None
    side = json.load(open(path + ".json")) if os.path.exists(path + ".json") else {}
    specials = side.get("special_tokens", SPECIAL_TOKENS)
    return ranks, side.get("pat_str", SPLIT_PATTERN), {s: len(ranks) + i for i, s in enumerate(specials)}


def load_tokenizer(spec):
    """A tiktoken.Encoding from a .tiktoken path or a tiktoken encoding name (e.g. cl100k_base)."""
    if spec.endswith(".tiktoken") or os.path.exists(spec):
        ranks, pat, specials = read_tiktoken(spec)
        return tiktoken.Encoding(os.path.basename(spec), pat_str=pat, mergeable_ranks=ranks, special_tokens=specials)
    try:
        enc = tiktoken.get_encoding(spec)
    except Exception as e:
        raise DataError(f"cannot load tokenizer {spec!r}: not a .tiktoken file, and tiktoken says: {e} "
                        "(named encodings download their file on first use)") from None
    if EOT not in enc.special_tokens_set:
        raise DataError(f"tokenizer {spec!r} has no {EOT} token")
    return enc


def tokenizer_of(data_dir, manifest):
    t = manifest["tokenizer"]
    return load_tokenizer(os.path.join(data_dir, t) if t.endswith(".tiktoken") else t)


def tokenizer_size(cfg):
    """Tokens in the vocabulary of cfg's tokenizer: data_dir's when it is prepared, else the BPE
    that tokenize would train (tokenizer_vocab + the special tokens)."""
    if is_done(cfg.data_dir):
        return tokenizer_of(cfg.data_dir, load_manifest(cfg.data_dir, verify=False)).n_vocab
    return cfg.tokenizer_vocab + len(SPECIAL_TOKENS)


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
    tmp = tmp_dir(data_dir)
    enc, tok_entry = _tokenizer_into(tmp, tokenizer, vocab_size, by_source)
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
    commit_dir(tmp, data_dir)
    for source, s in sources.items():
        print(f"{source}: {s['documents']} documents, {s['train_tokens']:,} train + {s['val_tokens']:,} val tokens, "
              f"{s['characters'] / (s['train_tokens'] + s['val_tokens']):.2f} characters per token")
    return load_manifest(data_dir)


def prepared(cfg):
    """The manifest of cfg's data_dir, tokenizing raw_data into it first if it is not there yet
    (what train.py does on first use), its shards checked (sha256 too with verify_data)."""
    if not is_done(cfg.data_dir):
        if not os.path.exists(cfg.raw_data):
            raise DataError(f"{cfg.data_dir} is not prepared and raw_data={cfg.raw_data!r} is not there to prepare it from")
        print(f"preparing {cfg.data_dir} from {cfg.raw_data} (once)")
        prepare(cfg.raw_data, cfg.data_dir, cfg.tokenizer, cfg.tokenizer_vocab, cfg.val_frac)
    manifest = load_manifest(cfg.data_dir, verify=cfg.verify_data)
    stale = [f"{k}={v!r} (config: {getattr(cfg, k)!r})" for k, v in manifest["prepared_with"].items() if getattr(cfg, k) != v]
    if stale:
        print(f"warning: {cfg.data_dir}/manifest.json was prepared with {', '.join(stale)}; using it as it is "
              "(`python data.py tokenize` rebuilds it)", file=sys.stderr)
    return manifest


def _tokenizer_into(tmp, tokenizer, vocab_size, by_source):
    """(Encoding, manifest entry) of the tokenizer a data_dir uses: a BPE trained on its documents,
    a copy of a user's .tiktoken file (so data_dir is self-contained), or a tiktoken name."""
    path = os.path.join(tmp, "tokenizer.tiktoken")
    if tokenizer == "bpe":
        return train_tokenizer((t for texts in by_source.values() for t in texts), vocab_size, path), "tokenizer.tiktoken"
    if os.path.exists(tokenizer):
        for ext in ("", ".json"):
            if os.path.exists(tokenizer + ext):
                shutil.copy(tokenizer + ext, path + ext)
        return load_tokenizer(path), "tokenizer.tiktoken"
    return load_tokenizer(tokenizer), tokenizer


# -----------------------------------------------------------------------------
# sample order: a keyed pseudo-random permutation per epoch, computed for just the positions asked

def splitmix64(x):
    """splitmix64's finaliser on uint64 arrays: a cheap, well-mixed hash (wrapping arithmetic is the point)."""
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
    keys = splitmix64(np.array([seed, epoch, 0, 0], dtype=np.uint64) + np.arange(4, dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019))
    keys = splitmix64(keys ^ splitmix64(keys[:1] ^ keys[1:2]))
    x = np.asarray(i, dtype=np.uint64).copy()
    todo = np.ones(len(x), dtype=bool)
    while todo.any():
        left, right = x[todo] >> np.uint64(half), x[todo] & mask
        for k in keys:
            left, right = right, left ^ (splitmix64(right ^ k) & mask)
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

    @classmethod
    def from_config(cls, cfg, global_batch, verify=False):
        """The samples of a run of cfg (a TrainConfig) at global_batch sequences per step: the
        one way training, `show` and eval.py's memorization build them."""
        return cls(cfg.data_dir, cfg.seq_len, global_batch, cfg.seed, verify, cfg.mixture, cfg.fim_rate,
                   cfg.fim_spm_rate, cfg.fim_sources)

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
            u = splitmix64(np.array([_key(self.seed, int(sample), j)], dtype=np.uint64)
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

def show(cfg, step, gb):
    """Print the text of every sequence of step's global batch (gb sequences), as trained on
    (FIM included)."""
    batches = Batches.from_config(cfg, gb)
    enc = tokenizer_of(cfg.data_dir, batches.manifest)
    ids = batches.sample_ids(step)
    shard, start = batches.locate(ids)
    rows = batches.tokens(ids, step)
    for j, (i, s, a) in enumerate(zip(ids, shard, start)):
        toks = rows[j].tolist()
        print(f"=== step {step} · sequence {j}/{len(ids)} · sample {i} · source {batches.sources[s]} · "
              f"tokens {a}..{a + len(toks)} of {batches.files[s]} ===")
        print(enc.decode(toks))


def main(argv):
    if not argv or argv[0] not in ("prepare", "tokenize", "show"):
        print(__doc__.strip())
        if argv and argv[0] in ("fetch-demo", "clean", "dedup", "train-tokenizer", "pipeline"):
            print(f"\n{argv[0]} is corpus curation: python curate.py {argv[0]} ...")
        return 2
    cmd, rest = argv[0], list(argv[1:])
    step, ckpt = pop_flag(rest, "--step"), pop_flag(rest, "--ckpt")
    if cmd in ("prepare", "tokenize"):
        cfg, _ = load_config(rest)
        prepare(cfg.raw_data, cfg.data_dir, cfg.tokenizer, cfg.tokenizer_vocab, cfg.val_frac)
        return 0
    if ckpt:  # the run's own config and global batch
        meta = read_meta(ckpt)
        cfg, _ = config_from_dict(meta["config"])
        step = meta["step"] - 1 if step is None else step  # the last step before the save
        gb = meta["data_position"]["global_batch"]
    else:
        cfg, _ = load_config(rest)
        gb = global_batch(cfg, cfg.world_size)  # world_size: the run's, when global_batch_size is 0
    if step is None or not str(step).isdigit():
        raise ConfigError(f"show needs --step S (a step number) or --ckpt DIR, got step={step!r}")
    show(cfg, int(step), gb)
    return 0


if __name__ == "__main__":
    run_command(main, DataError)
