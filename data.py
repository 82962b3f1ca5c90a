"""
What a training run reads: token shards and their manifest, made by the tokenize stage; the
batch of every step (order, mixtures, fill-in-the-middle); the validation windows. Curation
(cleaning, dedup) is curate.py and dedup.py; the tokenizers are tokenizer.py.

    python data.py tokenize CONFIG [--key=value ...]   docs_dir -> tokens_dir: shards + manifest
                                                       (train.py runs it when tokens_dir is missing)
    python data.py show --step S [CONFIG] [--key=value ...]   the text step S trains on
    python data.py show --ckpt out/toy/ckpt_0000100 [--step S]  the step that checkpoint saved last
    python data.py show --ckpt RELEASE/checkpoints/ckpt_0000100 --shards=DIR [--step S]
                                                the same, of a release (release.py) and its shards

tokenize is a stage over shards, as curation's are (stage.Stage: any number of workers, ranks
or Slurm array tasks, resumable, the same bytes). The order of training samples is a pure
function of (manifest, mixture, seed): batch(step, rank, world_size) needs nothing else, so a
resumed run, a run at another world size and `show` all see the same data at the same step.
"""
import hashlib, os, re, sys, time

import numpy as np

from config import (RENAMED, ConfigError, config_from_dict, global_batch, load_config, place,
                    pop_flag, run_command)
from executor import Stage
from stage import (DataError, Progress, already_done, is_done, read_json, sha256_file,
                   splitmix64, whole, write_json, written_by)
from tokenizer import FIM_TOKENS, install, load_json, tokenizer_of, tokenizer_sha256

# shard header: int64 magic, version, bytes per token, count
MAGIC, VERSION, HEADER_BYTES = 20241124, 1, 32
SHARD_TOKENS = 100_000_000  # tokens per shard of tokens_dir at most
# what a run reads of a manifest (tokenize writes more: counts, tokenizer_sha256, ...)
MANIFEST_KEYS = ("shards", "tokenizer", "eot", "prepared_with")
SHARD_KEYS = ("file", "split", "source", "tokens", "sha256")


# -----------------------------------------------------------------------------
# shards and manifest

def write_shard(path, tokens):
    header = np.array([MAGIC, VERSION, tokens.itemsize, len(tokens)], dtype="<i8")
    with whole(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(tokens.dtype.newbyteorder("<")).tobytes())


def read_shard(path):
    """The tokens of a shard as a read-only memmap, after checking its header and size."""
    if not os.path.exists(path):
        raise DataError(f"{path}: shard missing")
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise DataError(f"{path}: truncated: {size} bytes, "
                        f"shorter than the {HEADER_BYTES}-byte header")
    magic, version, itemsize, count = np.fromfile(path, dtype="<i8", count=4).tolist()
    if magic != MAGIC:
        raise DataError(f"{path}: not a nano360 token shard (magic {magic}, expected {MAGIC})")
    if version != VERSION or itemsize not in (2, 4):
        raise DataError(f"{path}: unsupported shard version {version} / "
                        f"token size {itemsize} bytes")
    if size != HEADER_BYTES + count * itemsize:
        raise DataError(f"{path}: truncated or corrupt: the header says {count:,} tokens "
                        f"({HEADER_BYTES + count * itemsize:,} bytes) "
                        f"but the file has {size:,} bytes")
    dtype = "<u2" if itemsize == 2 else "<u4"
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def load_manifest(tokens_dir, hash_shards=True):
    """manifest.json of tokens_dir, every shard's header checked and, with hash_shards, its
    sha256."""
    path = os.path.join(tokens_dir, "manifest.json")
    if not os.path.exists(path):
        raise DataError(f"{path}: no manifest "
                        f"(`python data.py tokenize CONFIG` makes {tokens_dir})")
    manifest = load_json(path)
    # what a hand edit or a half-copied folder leaves out: one line now, not a KeyError later
    missing = [k for k in MANIFEST_KEYS if k not in manifest] or [
        f"shards[{i}].{k}" for i, s in enumerate(manifest["shards"]) for k in SHARD_KEYS
        if not isinstance(s, dict) or k not in s][:1]
    if missing:
        raise DataError(f"{path}: no {', '.join(map(repr, missing))}, which tokenize "
                        f"writes: delete {tokens_dir} and tokenize again")
    quiet = not hash_shards or len(manifest["shards"]) < 50
    for s in manifest["shards"] if quiet else Progress("checking shards", manifest["shards"],
                                                       " shards"):
        shard = os.path.join(tokens_dir, s["file"])
        n = len(read_shard(shard))
        if n != s["tokens"]:
            raise DataError(f"{shard}: holds {n:,} tokens, {path} says {s['tokens']:,}")
        digest = sha256_file(shard) if hash_shards else s["sha256"]
        if digest != s["sha256"]:
            raise DataError(f"{shard}: sha256 {digest} does not match {path} ({s['sha256']}): "
                            "the shard changed since it was written")
    manifest["sha256"] = sha256_file(path)  # what checkpoints record
    return manifest


def _safe(source):
    # a file name for a source; a hash keeps apart two sources that differ only where it changes
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", source)
    return safe if safe == source else f"{safe}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"


class TokenWriter:
    """Token shards of one source, written as documents come: name_0000.bin, name_0001.bin, ...
    of at most shard_tokens tokens each, the header's count filled in when a shard closes."""

    def __init__(self, folder, name, dtype, shard_tokens):
        self.folder, self.name, self.dtype, self.cap = folder, name, dtype, shard_tokens
        self.files, self.f, self.n = [], None, 0  # files: [file, tokens] of the closed shards

    def write(self, tokens):
        tokens = np.asarray(tokens, dtype=self.dtype)
        while len(tokens):
            if self.f is None:
                self.files.append([f"{self.name}_{len(self.files):04d}.bin", 0])
                self.f, self.n = open(os.path.join(self.folder, self.files[-1][0]), "wb"), 0
                self.f.write(bytes(HEADER_BYTES))
            part, tokens = tokens[:self.cap - self.n], tokens[self.cap - self.n:]
            self.f.write(part.astype(part.dtype.newbyteorder("<")).tobytes())
            self.n += len(part)
            if self.n == self.cap:
                self.close()

    def close(self):
        if self.f is not None:
            self.f.seek(0)
            header = [MAGIC, VERSION, np.dtype(self.dtype).itemsize, self.n]
            self.f.write(np.array(header, dtype="<i8").tobytes())
            self.f.close()
            self.files[-1][1], self.f = self.n, None
        return self.files


# -----------------------------------------------------------------------------
# the tokenize stage: docs_dir -> tokens_dir

def tokenize(cfg, rank=0, world=1):
    """Tokenize the documents under cfg.docs_dir into cfg.tokens_dir, a stage (stage.Stage): the
    tokenizer (tokenizer.install: "bpe" trains one on a sample of tokenizer_sample characters),
    each task's documents tokenized into shards as they come, then manifest.json, with the last
    val_frac of each source's tokens as its val split. A complete tokens_dir is left as it is."""
    if already_done(cfg.tokens_dir, "tokenize"):
        return
    settings = dict(tokenizer=cfg.tokenizer, vocab_size=cfg.tokenizer_vocab, val_frac=cfg.val_frac,
                    shard_tokens=SHARD_TOKENS, sample_chars=cfg.tokenizer_sample)

    def setup(tmp):  # the tokenizer, and what the tasks need to know of it
        enc, entry = install(cfg.tokenizer, tmp, cfg.tokenizer_vocab, cfg.docs_dir,
                             cfg.tokenizer_sample)
        os.makedirs(os.path.join(tmp, "work"))
        dtype = "uint16" if enc.n_vocab <= 65536 else "uint32"
        write_json(os.path.join(tmp, "work", "tokenizer.json"),
                   dict(tokenizer=entry, n_vocab=enc.n_vocab, eot=enc.eot_token, dtype=dtype))
    with Stage("tokenize", cfg.docs_dir, cfg.tokens_dir, settings, cfg.shard_mb * 2**20,
               cfg.workers, rank, world, setup=setup) as st:
        if st.done:  # another worker finished it while this one was on its way
            return
        t0, threads = time.time(), max(1, (os.cpu_count() or 1) // st.workers)
        st.run("tokenize", len(st.tasks), _tokenize_task, SHARD_TOKENS, threads)
        st.finish(lambda tmp: _assemble_tokens(st, tmp, cfg.docs_dir, settings, time.time() - t0))


def _tokenize_task(st, i, out, shard_tokens, threads):
    info = read_json(os.path.join(st.tmp, "work", "tokenizer.json"))
    enc, dtype = tokenizer_of(st.tmp, info), np.dtype(info["dtype"])
    problems, sources, writers, batch = [], {}, {}, []

    def flush():  # bos_ids: a released tokenizer's own framing, LLaMA's <s> text </s>
        ids = enc.encode_ordinary_batch([t for _, t in batch], num_threads=threads)
        for (source, _), doc in zip(batch, ids):
            writers[source].write(enc.bos_ids + doc + [enc.eot_token])
        batch.clear()

    for doc in st.documents(i, problems):
        source, text = doc["source"], doc["text"]
        if source not in writers:
            writers[source] = TokenWriter(out, _safe(source), dtype, shard_tokens)
            sources[source] = dict(documents=0, characters=0, bytes=0)
        s = sources[source]
        s["documents"] += 1
        s["characters"] += len(text)
        s["bytes"] += len(text.encode())
        batch.append((source, text))
        if len(batch) == 256:  # tiktoken encodes a batch on several threads (no GIL)
            flush()
    flush()
    for source, w in writers.items():
        sources[source]["shards"] = [[f, n, sha256_file(os.path.join(out, f))]
                                     for f, n in w.close()]
    write_json(os.path.join(out, "task.json"), dict(sources=sources, problems=problems))


def _assemble_tokens(st, tmp, docs_dir, settings, seconds):
    """manifest.json from the tasks' shards: per source, in task order, its first tokens train and
    the last val_frac val (_split_source)."""
    info = read_json(os.path.join(tmp, "work", "tokenizer.json"))
    parts, sources = {}, {}  # per source: its shards in task order, its counts

    def each_task():
        for i in range(len(st.tasks)):
            t = read_json(os.path.join(st.path("tokenize", i), "task.json"))
            for source, s in t["sources"].items():
                parts.setdefault(source, []).extend((i, *shard) for shard in s["shards"])
                c = sources.setdefault(source, dict(documents=0, characters=0, bytes=0))
                for k in c:
                    c[k] += s[k]
            yield t["problems"]
    problems = st.write_problems(tmp, each_task())
    val_frac, shards, size = settings["val_frac"], [], sum(s["bytes"] for s in sources.values())
    for source in sorted(parts):
        total = sum(n for _, _, n, _ in parts[source])
        cut = total - max(1, int(total * val_frac)) if val_frac > 0 else total
        shards += _split_source(st, tmp, source, parts[source], cut)
        s = sources[source]
        sources[source] = dict(documents=s["documents"], characters=s["characters"],
                               train_tokens=int(cut), val_tokens=int(total - cut))
    made = dict(docs_dir=docs_dir, tokenizer=settings["tokenizer"], val_frac=val_frac)
    # the vocabulary asked only means something for a BPE trained here
    if settings["tokenizer"] == "bpe":
        made["tokenizer_vocab"] = settings["vocab_size"]
    # the tokenizer's files as they made the shards: tokenizer_of checks them (check_tokenizer)
    manifest = dict(version=VERSION, prepared_with=made, tokenizer=info["tokenizer"],
                    tokenizer_sha256=tokenizer_sha256(tmp, info["tokenizer"]),
                    n_vocab=info["n_vocab"], eot=info["eot"], dtype=info["dtype"],
                    val_frac=val_frac, sources=sources, shards=shards, problems=problems)
    write_json(os.path.join(tmp, "manifest.json"), manifest)
    st.write_timing(tmp, size, seconds)
    for source, s in sorted(sources.items()):
        per_token = s["characters"] / (s["train_tokens"] + s["val_tokens"])
        print(f"{source}: {s['documents']} documents, {s['train_tokens']:,} train + "
              f"{s['val_tokens']:,} val tokens, {per_token:.2f} characters per token")


def _split_source(st, tmp, source, parts, cut):
    """The manifest entries of one source's shards moved into tmp as train_* (its first cut
    tokens) and val_* (the rest): parts are (task, file, tokens, sha256) in order; the one shard
    that straddles the cut is written again as two."""
    made = {"train": [], "val": []}

    def add(split, src=None, tokens=None, digest=None):
        name = os.path.join(tmp, f"{split}_{_safe(source)}_{len(made[split]):04d}.bin")
        if src is not None:
            st.move("tokenize", src[0], src[1], name)
        elif tokens is not None:
            write_shard(name, tokens)
        made[split].append(dict(file=os.path.basename(name), split=split, source=source,
                                tokens=len(read_shard(name)), sha256=digest or sha256_file(name)))

    a = 0
    for i, f, k, digest in parts:
        path = os.path.join(st.path("tokenize", i), f)
        if a + k <= cut or a >= cut:
            add("train" if a + k <= cut else "val", (i, f), digest=digest)
        else:  # the cut falls inside: two new shards (on a rerun after a crash, already there)
            whole = read_shard(path) if os.path.exists(path) else None
            for split, piece in (("train", slice(0, cut - a)), ("val", slice(cut - a, None))):
                add(split, tokens=None if whole is None else np.array(whole[piece]))
            if whole is not None:
                del whole
                os.remove(path)
        a += k
    return made["train"] + made["val"]


def tokenized(cfg, rank=0, world=1):
    """The manifest of cfg's tokens_dir, tokenizing docs_dir into it first when it is not there
    yet (train.py does on first use), its shards checked (and hashed, with hash_shards)."""
    made = written_by(cfg.tokens_dir) if is_done(cfg.tokens_dir) else None
    if made not in (None, "tokenize"):  # a run's checkpoint, clean's documents: not shards
        raise DataError(f"tokens_dir={cfg.tokens_dir} holds {made}'s complete output, not token "
                        "shards: choose another tokens_dir")
    if not is_done(cfg.tokens_dir):
        if not os.path.exists(cfg.docs_dir):
            raise DataError(f"{cfg.tokens_dir} is not made yet and docs_dir={cfg.docs_dir!r} "
                            "is not there to tokenize it from")
        print(f"tokenizing {cfg.docs_dir} into {cfg.tokens_dir} (once)")
        tokenize(cfg, rank, world)
    manifest = load_manifest(cfg.tokens_dir, cfg.hash_shards)
    # older manifests
    made = {RENAMED.get(k, k): v for k, v in manifest["prepared_with"].items()}
    stale = [f"{k}={v!r} (config: {getattr(cfg, k)!r})" for k, v in made.items()
             if getattr(cfg, k) != v]
    if stale:
        print(f"warning: {cfg.tokens_dir}/manifest.json was made with {', '.join(stale)}; "
              "using it as it is (delete it and `python data.py tokenize` makes it again)",
              file=sys.stderr)
    return manifest


# -----------------------------------------------------------------------------
# sample order: a keyed pseudo-random permutation per epoch, computed for just the positions
# asked (splitmix64: stage.py's hash)

def permute(i, n, seed, epoch):
    """Positions i of a pseudo-random permutation of range(n) keyed by (seed, epoch): a 4-round
    Feistel network on the smallest even number of bits covering n, cycle-walking past values
    >= n. O(len(i)) work, so a 550M-sample epoch needs no 4 GB permutation table."""
    half = max(1, ((int(n) - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = splitmix64(np.array([seed, epoch, 0, 0], dtype=np.uint64)
                      + np.arange(4, dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019))
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

    def __init__(self, tokens_dir, seq_len, global_batch, seed, hash_shards=True, mixture=(),
                 fim_rate=0.0, fim_spm_rate=0.5, fim_sources=("code",)):
        self.manifest = load_manifest(tokens_dir, hash_shards)
        self.seq_len, self.global_batch, self.seed = seq_len, global_batch, seed
        if global_batch <= 0:
            raise ValueError(f"global_batch must be positive, got {global_batch}")
        entries = [s for s in self.manifest["shards"] if s["split"] == "train"]
        self.shards = [read_shard(os.path.join(tokens_dir, s["file"])) for s in entries]
        self.files, self.sources = [s["file"] for s in entries], [s["source"] for s in entries]
        self.offsets = np.cumsum([0] + [max(0, (len(t) - 1) // seq_len) for t in self.shards])
        self.n = int(self.offsets[-1])
        if self.n == 0:
            raise DataError(f"{tokens_dir}: no train shard holds "
                            f"seq_len + 1 = {seq_len + 1} tokens")
        # each source's windows are one contiguous range of sample ids (shards are listed by source)
        self.span = {}
        for k, src in enumerate(self.sources):
            lo, hi = self.span.get(src, (int(self.offsets[k]), 0))
            self.span[src] = (lo, int(self.offsets[k + 1]))
        self.phases, self.phase_fim = [], []
        for start, weights, *options in sorted(mixture or [], key=lambda ph: ph[0]):
            extra = set(options[0]) - {"fim_rate", "fim_spm_rate"} if options else set()
            if len(options) > 1 or extra:
                raise DataError(f"mixture phase at step {start}: (start_step, weights) or "
                                f"(start_step, weights, {{'fim_rate': r, 'fim_spm_rate': s}}), "
                                f"got extra {options if len(options) > 1 else extra}")
            self.phase_fim.append({**dict(fim_rate=fim_rate, fim_spm_rate=fim_spm_rate),
                                   **(options[0] if options else {})})
            unknown = sorted(set(weights) - set(self.span))
            if unknown or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
                raise DataError(f"mixture phase at step {start}: weights {weights} must be >= 0, "
                                f"not all 0, over sources of {tokens_dir} "
                                f"({', '.join(sorted(self.span))}); unknown: {unknown}")
            names = sorted(w for w in weights
                           if weights[w] > 0 and self.span[w][1] > self.span[w][0])
            share = np.array([weights[w] for w in names], dtype=np.float64)
            share = share / share.sum() * MIX_BLOCK
            # largest remainder: the block holds exactly MIX_BLOCK
            counts = np.floor(share).astype(np.int64)
            counts[np.argsort(-(share - counts), kind="stable")[:MIX_BLOCK - counts.sum()]] += 1
            self.phases.append((int(start) * global_batch, names, counts))
        if self.phases and self.phases[0][0] != 0:
            raise DataError("the first mixture phase must start at step 0, "
                            f"not {self.phases[0][0] // global_batch}")
        self.fim_default, self.fim_sources = (dict(fim_rate=fim_rate, fim_spm_rate=fim_spm_rate),
                                              set(fim_sources))
        self.fim = fim_rate > 0 or any(f["fim_rate"] > 0 for f in self.phase_fim)
        if self.fim:
            enc = tokenizer_of(tokens_dir, self.manifest)
            missing = [t for t in FIM_TOKENS if t not in enc.special_tokens_set]
            if missing:
                raise DataError(f"{tokens_dir}: fim_rate > 0 needs the tokens "
                                f"{', '.join(FIM_TOKENS)}; its tokenizer "
                                f"{self.manifest['tokenizer']} lacks {', '.join(missing)}")
            # prefix, middle, suffix
            self.fim_ids = [enc.encode_single_token(t) for t in FIM_TOKENS]
            self.eot = self.manifest["eot"]
        self._blocks = {}

    @classmethod
    def from_config(cls, cfg, global_batch, hash_shards=False):
        """The samples of a run of cfg (a TrainConfig) at global_batch sequences per step: the
        one way training, `show` and eval.py's memorization build them."""
        return cls(cfg.tokens_dir, cfg.seq_len, global_batch, cfg.seed, hash_shards, cfg.mixture,
                   cfg.fim_rate, cfg.fim_spm_rate, cfg.fim_sources)

    def _block(self, p, b):
        """Phase p's block b: the source of each slot and how many slots of that source
        precede it."""
        if (p, b) not in self._blocks:
            names, counts = self.phases[p][1:]
            slots = np.repeat(np.arange(len(names)), counts)[
                permute(np.arange(MIX_BLOCK), MIX_BLOCK, self.seed, _key(p, b))]
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
                self._prior.append({w: self._prior[-1].get(w, 0) + picks.get(w, 0)
                                    for w in set(picks) | set(self._prior[-1])})
        names, ks = [], []
        for x in pos.tolist():  # which source, and how many of its samples came before this one
            p = int(np.searchsorted(starts, x, side="right")) - 1
            local = x - starts[p]
            slots, before = self._block(p, local // MIX_BLOCK)
            slot = slots[local % MIX_BLOCK]
            names.append(self.phases[p][1][slot])
            ks.append(self._prior[p].get(names[-1], 0)
                      + local // MIX_BLOCK * self.phases[p][2][slot]
                      + before[local % MIX_BLOCK])
        ids, ks, names = np.empty_like(pos), np.array(ks, dtype=np.int64), np.array(names)
        for name in np.unique(names):  # each source walks its windows in a new order every epoch
            lo, hi = self.span[str(name)]
            for epoch in np.unique(ks[names == name] // (hi - lo)):
                sel = (names == name) & (ks // (hi - lo) == epoch)
                ids[sel] = lo + permute(ks[sel] % (hi - lo), hi - lo, self.seed,
                                        _key(str(name), int(epoch)))
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
            raise ValueError(f"global batch of {self.global_batch} sequences cannot be split "
                             f"over {world_size} ranks")
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
        rows = [self.shards[s][a:a + self.seq_len + 1].astype(np.int64)
                for s, a in zip(shard, start)]
        if self.fim:
            p = int(np.searchsorted([ph[0] for ph in self.phases], step * self.global_batch,
                                    side="right")) - 1
            f = self.phase_fim[p] if self.phases else self.fim_default
            rows = [self.fim_row(r, i, f["fim_rate"], f["fim_spm_rate"])
                    if self.sources[s] in self.fim_sources else r
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
                piece = np.concatenate([[pre, suf], s, [mid], p, m] if u[3] < spm_rate
                                       else [[pre], p, [suf], s, [mid], m])
            out.append(piece)
            out.append(row[b:b + 1])  # the end-of-text token itself
            a = b + 1
        return np.concatenate(out)[:len(row)].astype(np.int64)

    def sha256(self, step):
        """sha256 of step's whole global batch (every rank's rows, as int64): what a checkpoint
        records of the last step it trained, and a release's data order is checked against."""
        rows = self.tokens(self.sample_ids(step), step).astype(np.int64, copy=False)
        return hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()

    def batch(self, step, rank=0, world_size=1):
        """(global_batch / world_size, seq_len + 1) int64 tokens: inputs are [:, :-1], targets
        [:, 1:]."""
        import torch
        return torch.from_numpy(self.tokens(self.sample_ids(step, rank, world_size), step))


def val_sequences(tokens_dir, manifest, seq_len, max_seqs=0):
    """{source: (n, seq_len + 1) int64} of consecutive windows of each source's val split."""
    out = {}
    for s in manifest["shards"]:
        if s["split"] == "val":
            t = read_shard(os.path.join(tokens_dir, s["file"]))
            n = (len(t) - 1) // seq_len
            rows = [t[j * seq_len:j * seq_len + seq_len + 1] for j in range(n)]
            out.setdefault(s["source"], []).extend(rows)
    return {src: np.stack(r[:max_seqs or None]).astype(np.int64) for src, r in out.items() if r}


# -----------------------------------------------------------------------------
# command line

def release_run(ckpt, shards):
    """(TrainConfig, meta, manifest) of a release's checkpoint folder (its nano360.json, which
    release.py writes), its data read from shards: the token shards the release names, whose
    manifest must be the one the checkpoint records."""
    where = os.path.join(ckpt, "nano360.json")
    meta = load_json(where)
    cfg, _ = config_from_dict(meta["config"], where)
    cfg.tokens_dir = shards
    manifest = load_manifest(shards, hash_shards=False)
    if manifest["sha256"] != meta["manifest_sha256"]:
        raise DataError(f"{shards}/manifest.json is not the manifest {where} records "
                        f"(sha256 {meta['manifest_sha256'][:12]}...): other shards")
    return cfg, meta, manifest


def show(cfg, step, gb):
    """Print the text of every sequence of step's global batch (gb sequences), as trained on
    (FIM included)."""
    batches = Batches.from_config(cfg, gb)
    enc = tokenizer_of(cfg.tokens_dir, batches.manifest)
    ids = batches.sample_ids(step)
    shard, start = batches.locate(ids)
    rows = batches.tokens(ids, step)
    for j, (i, s, a) in enumerate(zip(ids, shard, start)):
        toks = rows[j].tolist()
        print(f"=== step {step} · sequence {j}/{len(ids)} · sample {i} · "
              f"source {batches.sources[s]} · "
              f"tokens {a}..{a + len(toks)} of {batches.files[s]} ===")
        print(enc.decode(toks))


def main(argv):
    if not argv or argv[0] not in ("tokenize", "show"):
        print(__doc__.strip())
        if argv and argv[0] == "prepare":
            print("\nprepare is now called tokenize: python data.py tokenize CONFIG")
        elif argv and argv[0] in ("fetch-demo", "clean", "dedup", "train-tokenizer", "pipeline"):
            print(f"\n{argv[0]} is corpus curation: python curate.py {argv[0]} ...")
        return 2
    cmd, rest = argv[0], list(argv[1:])
    step, ckpt, shards = (pop_flag(rest, f) for f in ("--step", "--ckpt", "--shards"))
    if cmd == "tokenize":
        cfg, _ = load_config(rest)
        rank, world, _ = place(array=True)
        tokenize(cfg, rank, world)
        return 0
    released = ckpt and os.path.isfile(os.path.join(ckpt, "nano360.json"))
    if released and not shards:
        raise ConfigError(f"{ckpt} is a release's checkpoint: give --shards=DIR, the token shards "
                          "the release names (python release.py verify checks them)")
    if released:  # the data the release names, where the stranger keeps it
        cfg, meta, _ = release_run(ckpt, shards)
    elif ckpt:  # the run's own config
        from checkpoint import read_meta  # (imports torch: only here)
        meta = read_meta(ckpt)
        cfg, _ = config_from_dict(meta["config"])
    if ckpt:  # and its global batch
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
