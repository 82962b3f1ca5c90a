"""
Every tokenizer job: train a byte-level BPE (train_tokenizer: curate.py's train-tokenizer stage
on a sample of a corpus), read and write .tiktoken files, tiktoken's named encodings, a released model's Hugging Face tokenizer.json (HFTokenizer), where a run's
tokenizer is and its size, and the export of ours to tokenizer.json. Nothing here imports torch.

A tokenizer file of ours is .tiktoken ranks (base64 token, rank per line) plus <file>.json
beside it: the split pattern and the special tokens, whose ids follow the ranks. Whatever its
kind, a tokenizer is used through the part of tiktoken's Encoding that nano360 needs:
encode_ordinary(_batch), decode, decode_bytes, n_vocab, eot_token, special_tokens_set, plus
bos_ids (what goes before a text: LLaMA's <s>, none for ours) and prefix_token (what goes
before an empty context, as lm-eval does).
"""
import base64, json, os, re, shutil, sys, time

import tiktoken

from guard import json_dict
from stage import (DataError, is_done, read_json, remove_if_there, report_problems,
                   sample_documents, sha256_file, write_json)

# gpt-4's split pattern, but digits one at a time, as MAP-Neo's tokenizer splits them
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}|"""
                 r""" ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
EOT = "<|endoftext|>"
FIM_TOKENS = ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
SPECIAL_TOKENS = [EOT, *FIM_TOKENS, "<|pad|>"]  # their ids come right after the BPE ranks


def train_bpe(texts, vocab_size, path):
    """A byte-level BPE of vocab_size tokens (plus SPECIAL_TOKENS) learnt from texts by rustbpe,
    written to path (.tiktoken) and path.json."""
    import rustbpe
    # flushed: a log shows what the next minutes are spent on
    print(f"training a {vocab_size}-token BPE on {sum(map(len, texts)):,} characters", flush=True)
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size, pattern=SPLIT_PATTERN)
    with open(path, "w") as f:
        for token, rank in sorted(tok.get_mergeable_ranks(), key=lambda x: x[1]):
            f.write(f"{base64.b64encode(bytes(token)).decode()} {rank}\n")
    with open(path + ".json", "w") as f:
        json.dump(dict(pat_str=tok.get_pattern(), special_tokens=SPECIAL_TOKENS), f, indent=1)
    enc = load_tokenizer(path)
    if enc.n_vocab - len(SPECIAL_TOKENS) < vocab_size:
        print(f"warning: the BPE stopped at {enc.n_vocab - len(SPECIAL_TOKENS)} of the "
              f"{vocab_size} tokens asked: the text has no more pairs to merge", file=sys.stderr)
    return enc


def load_json(path):
    """The JSON object in path; a DataError naming the file (and the line) when it is not one
    (stage.read_json is the lenient reader: None for a file not there or half written)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except ValueError as e:  # JSONDecodeError (which has a line), or bytes that are not UTF-8
        line = f":{e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise DataError(f"{path}{line}: not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a JSON object (a {type(obj).__name__})")
    return obj


def read_tiktoken(path):
    """(ranks {bytes: rank}, split pattern, special tokens {name: id}) of a .tiktoken file and its
    .json. What tiktoken would refuse with a panic, or take wrongly, is a DataError naming the
    file: a rank or a token given twice, ranks that are not 0..n-1 (the special tokens' ids follow
    them), a sidecar that is not JSON or holds other kinds of values."""
    if not os.path.exists(path):
        raise DataError(f"tokenizer file not found: {path}")
    ranks, line_of = {}, {}  # line_of: the line each rank is on
    # errors="replace": a byte that is not UTF-8 fails its line below, which is then named
    for lineno, line in enumerate(open(path, encoding="utf-8", errors="replace"), 1):
        try:
            token, rank = line.split()
            token, rank = base64.b64decode(token, validate=True), int(rank)
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected '<base64 token> <rank>', "
                            f"got {line.strip()!r}") from None
        if rank in line_of or token in ranks:
            what, first = ((f"rank {rank}", line_of[rank]) if rank in line_of
                           else (f"token {token!r}", line_of[ranks[token]]))
            raise DataError(f"{path}:{lineno}: {what} is given twice (line {first} too)")
        ranks[token], line_of[rank] = rank, lineno
    gaps = set(range(len(ranks))) - set(line_of)
    if gaps or not ranks:
        raise DataError(f"{path}: " + (f"no rank {min(gaps)}: the ranks must be 0 to "
                                       f"{len(ranks) - 1}" if gaps else "no tokens in it"))
    side_path = path + ".json"
    side = load_json(side_path) if os.path.exists(side_path) else {}
    pat, specials = side.get("pat_str", SPLIT_PATTERN), side.get("special_tokens", SPECIAL_TOKENS)
    if not isinstance(pat, str):
        raise DataError(f"{side_path}: pat_str is {pat!r}, not a string (the split pattern)")
    if (not isinstance(specials, list) or not all(isinstance(t, str) for t in specials)
            or len(set(specials)) < len(specials) or EOT not in specials):
        raise DataError(f"{side_path}: special_tokens is {specials!r}, not a list of distinct "
                        f"names with {EOT} among them")
    return ranks, pat, {t: len(ranks) + i for i, t in enumerate(specials)}


def load_tokenizer(spec):
    """A tiktoken.Encoding from a .tiktoken path or a tiktoken encoding name (e.g. cl100k_base),
    or an HFTokenizer from a tokenizer.json (or a folder holding one: a released model's)."""
    if spec.endswith(".json") or os.path.isdir(spec):
        return HFTokenizer(spec)
    if spec.endswith(".tiktoken") or os.path.exists(spec):
        ranks, pat, specials = read_tiktoken(spec)
        try:
            enc = tiktoken.Encoding(os.path.basename(spec), pat_str=pat, mergeable_ranks=ranks,
                                    special_tokens=specials)
        except ValueError as e:  # all but the pattern is checked: the sidecar's, ours compiles
            raise DataError(f"{spec}.json: pat_str is not a pattern tiktoken can compile: "
                            f"{' '.join(str(e).split())}") from None
    else:
        try:
            enc = tiktoken.get_encoding(spec)
        except Exception as e:
            raise DataError(f"cannot load tokenizer {spec!r}: not a .tiktoken file, and "
                            f"tiktoken says: {e} (named encodings download their file on "
                            "first use)") from None
        if EOT not in enc.special_tokens_set:
            raise DataError(f"tokenizer {spec!r} has no {EOT} token")
    enc.bos_ids, enc.prefix_token = [], enc.eot_token
    return enc


def special_ids(enc):
    """The ids of the special tokens (they stand for no bytes of text)."""
    return {enc.encode_single_token(t) for t in enc.special_tokens_set}


# -----------------------------------------------------------------------------
# a run's tokenizer: the one in its tokens_dir, named by the manifest

def tokenizer_of(tokens_dir, manifest):
    """The tokenizer of tokens_dir that its manifest names, once check_tokenizer has found its
    files to be those that made the shards."""
    if "tokenizer" not in manifest:
        raise DataError(f"{os.path.join(tokens_dir, 'manifest.json')}: no 'tokenizer' "
                        f"(delete {tokens_dir} and tokenize again)")
    check_tokenizer(tokens_dir, manifest)
    t = manifest["tokenizer"]
    return load_tokenizer(os.path.join(tokens_dir, t) if t.endswith((".tiktoken", ".json")) else t)


def tokenizer_sha256(folder, name):
    """{file: sha256} of the files in folder that the tokenizer a manifest names (name) is read
    from: a .tiktoken and its .json, or tokenizer.json and the tokenizer_config.json (or
    config.json) that name its end-of-text; {} for a tiktoken name (tiktoken checks the file it
    downloads). What tokenize records in the manifest as "tokenizer_sha256"."""
    names = ([name, name + ".json"] if name.endswith(".tiktoken") else
             [name, "tokenizer_config.json", "config.json"] if name.endswith(".json") else [])
    return {n: sha256_file(os.path.join(folder, n)) for n in names
            if os.path.exists(os.path.join(folder, n))}


def check_tokenizer(tokens_dir, manifest, recorded=None, by=None):
    """A DataError unless the tokenizer files in tokens_dir are those the manifest recorded when
    tokenize wrote the shards (manifest["tokenizer_sha256"]: {file: sha256}), and, given recorded
    (what checkpoint `by` recorded of them), those too. A manifest or a checkpoint from before
    these hashes has none: nothing to compare, nothing said."""
    where = os.path.join(tokens_dir, "manifest.json")
    want = manifest.get("tokenizer_sha256")
    if want is not None:
        got = tokenizer_sha256(tokens_dir, manifest["tokenizer"])
        for n in sorted(set(want) | set(got)):
            if want.get(n) != got.get(n):
                have = f"has sha256 {got[n][:12]}..." if n in got else "is missing"
                said = f"recorded {want[n][:12]}..." if n in want else "recorded no such file"
                raise DataError(f"{os.path.join(tokens_dir, n)} {have}, {where} {said}: the "
                                "token shards were made with another tokenizer")
    if recorded is not None and want is not None and recorded != want:
        n = min(n for n in set(want) | set(recorded) if want.get(n) != recorded.get(n))
        raise DataError(f"{by} was trained with another tokenizer than {tokens_dir}'s: {n} "
                        f"had sha256 {(recorded.get(n) or 'none')[:12]}..., {where} records "
                        f"{(want.get(n) or 'none')[:12]}...")


def tokenizer_size(cfg):
    """Tokens in the vocabulary of cfg's tokenizer: tokens_dir's when it is made, else the one
    tokenize would use: its file or tiktoken name, or a BPE (tokenizer_vocab + the special
    tokens) when that is to be trained (tokenizer="bpe", or a file curate.py has not written
    yet)."""
    manifest = read_json(os.path.join(cfg.tokens_dir, "manifest.json"))
    if is_done(cfg.tokens_dir) and manifest:
        return tokenizer_of(cfg.tokens_dir, manifest).n_vocab
    t = cfg.tokenizer
    if t != "bpe" and (os.path.exists(t)
                       or not (t.endswith((".tiktoken", ".json")) or os.sep in t)):
        return load_tokenizer(t).n_vocab
    return cfg.tokenizer_vocab + len(SPECIAL_TOKENS)


def install(spec, folder, vocab_size, docs_dir, sample_chars):
    """The tokenizer of a tokens_dir, put into its folder so that the folder is self-contained:
    a BPE trained on a sample of docs_dir (spec "bpe", stage.sample_documents), a copy of a
    .tiktoken file or of a released tokenizer.json, or a tiktoken name. Returns (the tokenizer,
    what the manifest names it by)."""
    if spec == "bpe":
        path = os.path.join(folder, "tokenizer.tiktoken")
        return (train_bpe(sample_documents(docs_dir, sample_chars)[0], vocab_size, path),
                "tokenizer.tiktoken")
    if spec.endswith(".json") or os.path.isdir(spec):
        enc = HFTokenizer(spec)
        save_hf_tokenizer(enc, folder)
        return enc, "tokenizer.json"
    if os.path.exists(spec):
        enc = load_tokenizer(spec)  # read where it is: an error names the user's file, not a copy
        for ext in ("", ".json"):
            if os.path.exists(spec + ext):
                shutil.copy(spec + ext, os.path.join(folder, "tokenizer.tiktoken" + ext))
        return enc, "tokenizer.tiktoken"
    return load_tokenizer(spec), spec


# -----------------------------------------------------------------------------
# a released model's tokenizer.json

def byte_to_unicode():
    """GPT-2's printable stand-ins for the 256 bytes, which byte-level BPE vocabularies are
    written in."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs, cs, n = bs + [b], cs + [256 + n], n + 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _token_name(value):
    # tokenizer_config.json writes a token as "</s>" or as {"content": "</s>", ...}
    return value.get("content") if isinstance(value, dict) else value


class HFTokenizer:
    """A Hugging Face tokenizer.json, the tokenizer a released model ships (LLaMA's 32k that
    Amber uses, MAP-Neo's 64k, byte-level BPEs like ours), run as written by the `tokenizers`
    library, as transformers' PreTrainedTokenizerFast runs it. As with tiktoken's
    encode_ordinary, special tokens in a text are text (a document holding "</s>" is not cut
    there) and encode_ordinary adds nothing around a text; bos_ids are what the file's
    post-processor puts before one (LLaMA's <s>), which transformers' tokenizer(text), and so
    lm-eval, include: tokenize and eval.py put them there too. End-of-text is the eos token of
    tokenizer_config.json beside the file (else config.json's eos_token_id); prefix_token, what
    lm-eval puts before a text with no context, is its bos token when there is one."""

    NAMES = {"eos": ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>"),
             "bos": ("<s>", "<|begin_of_text|>", "<bos>")}

    def __init__(self, spec):
        path = os.path.join(spec, "tokenizer.json") if os.path.isdir(spec) else spec
        if not os.path.isfile(path):
            raise DataError(f"{spec}: no tokenizer.json there")
        try:
            import tokenizers
        except ImportError:
            raise DataError(f"{path}: a tokenizer.json is read by the tokenizers library: "
                            "pip install tokenizers") from None
        try:
            self.tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # tokenizers' own message says what is wrong with the file
            raise DataError(f"{path}: not a tokenizer.json that tokenizers can read: {e}") from None
        self.tok.encode_special_tokens = True  # special tokens in text are text
        self.name, self.path, self.n_vocab = (path, path,
                                              self.tok.get_vocab_size(with_added_tokens=True))
        added = self.tok.get_added_tokens_decoder()
        self.special_tokens_set = {t.content for t in added.values() if t.special}
        self.eot_token = self._special(path, "eos")
        if self.eot_token is None:
            raise DataError(f"{path}: cannot tell its end-of-text token: no eos_token in a "
                            "tokenizer_config.json beside it, no eos_token_id in a config.json, "
                            f"none of {self.NAMES['eos']} in it")
        bos = self._special(path, "bos")
        self.prefix_token = self.eot_token if bos is None else bos
        plain, framed = (self.tok.encode("a", add_special_tokens=b).ids for b in (False, True))
        self.bos_ids = []  # what the post-processor puts before the text
        for i in range(len(framed)):
            if framed[i:i + len(plain)] == plain:
                self.bos_ids = framed[:i]
                break
        decoder = json.loads(self.tok.decoder.__getstate__()) if self.tok.decoder else {}
        self.byte_level = "ByteLevel" in [d.get("type")
                                          for d in [decoder] + decoder.get("decoders", [])]

    def _special(self, path, kind):
        # the eos / bos token's id: tokenizer_config.json, config.json, then the usual names
        folder = os.path.dirname(path)
        side = os.path.join(folder, "tokenizer_config.json")
        name = None
        if os.path.exists(side):
            name = _token_name(load_json(side).get(f"{kind}_token"))
        if name is not None:
            i = self.tok.token_to_id(name)
            if i is None:
                raise DataError(f"{side}: {kind}_token {name!r} is not a token of {path}")
            return i
        conf = os.path.join(folder, "config.json")
        i = load_json(conf).get(f"{kind}_token_id") if os.path.exists(conf) else None
        if i is not None:
            return i[0] if isinstance(i, list) else int(i)
        for token in self.NAMES[kind]:
            i = self.tok.token_to_id(token)
            if i is not None:
                return i
        return None

    def encode_ordinary(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_ordinary_batch(self, texts, num_threads=None):
        if num_threads:  # tokenizers' threads (rayon's pool, made on first use): a worker's share
            os.environ.setdefault("RAYON_NUM_THREADS", str(num_threads))
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def encode_single_token(self, token):
        i = self.tok.token_to_id(token)
        if i is None:
            raise KeyError(token)
        return i

    def decode(self, ids):
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def decode_bytes(self, ids):
        # byte-level: each token's exact bytes (a piece may end inside a character); otherwise the
        # decoder's text (SentencePiece-style: "▁" is a space, the one it prepends is stripped)
        if self.byte_level:
            return b"".join(self.token_bytes[i] for i in ids)
        return self.decode(ids).encode("utf-8")

    def decode_single_token_bytes(self, i):
        return self.token_bytes[i]

    @property
    def token_bytes(self):
        # the bytes of every token, once: byte-level stand-ins undone, or "▁" as space and
        # <0xNN> as a byte
        if not hasattr(self, "_bytes"):
            inv, out = {c: b for b, c in byte_to_unicode().items()}, []
            added = {i: t.content for i, t in self.tok.get_added_tokens_decoder().items()}
            for i in range(self.n_vocab):
                t = added.get(i) or self.tok.id_to_token(i) or ""
                if i in added:
                    out.append(t.encode())
                elif self.byte_level:
                    out.append(bytes(inv[c] for c in t) if all(c in inv for c in t) else t.encode())
                elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
                    out.append(bytes([int(t[3:5], 16)]))
                else:
                    out.append(t.replace("▁", " ").encode())
            self._bytes = out
        return self._bytes


def save_hf_tokenizer(enc, folder):
    """A released tokenizer.json copied into folder as it is, with a tokenizer_config.json that
    names the eos and bos tokens it is read with (tokens_dir, an export)."""
    shutil.copy(enc.path, os.path.join(folder, "tokenizer.json"))
    names = {f"{k}_token": enc.tok.id_to_token(i)
             for k, i in (("eos", enc.eot_token), ("bos", enc.prefix_token))}
    write_json(os.path.join(folder, "tokenizer_config.json"),
               dict(tokenizer_class="PreTrainedTokenizerFast", **names))


# -----------------------------------------------------------------------------
# ours as a tokenizer.json: the .tiktoken ranks as a tokenizers byte-level BPE

def bpe_parts(ranks, token, max_rank):
    # tiktoken's BPE on token's bytes using only ranks below max_rank: lowest-ranked pair first
    parts = [bytes([b]) for b in token]
    while True:
        pairs = [(ranks.get(parts[i] + parts[i + 1], max_rank), i) for i in range(len(parts) - 1)]
        rank, i = min(pairs, default=(max_rank, 0))
        if rank >= max_rank:
            return parts
        parts[i:i + 2] = [parts[i] + parts[i + 1]]


def export_tokenizer(ranks, pat, specials, out_dir):
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; False (with a
    note) when the tokenizer cannot be expressed."""
    try:
        from tokenizers import Regex
        # onig (tokenizers' regex engine) must take our pattern, possessive quantifiers included
        Regex(pat)
    except ImportError:
        pass  # cannot check here: onig has long accepted ?+ and ++
    except Exception as e:
        print(f"note: no tokenizer.json written: tokenizers' regex engine rejects "
              f"pat_str {pat!r}: {e}")
        return False
    u = byte_to_unicode()

    def text(b):
        return "".join(u[x] for x in b)
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda x: x[1]):
        if len(token) >= 2:
            parts = bpe_parts(ranks, token, rank)
            if len(parts) != 2:  # not a BPE vocabulary: a token no merge of lower ranks can build
                print(f"note: no tokenizer.json written: token {token!r} (rank {rank}) is not a "
                      "merge of two lower ranks")
                return False
            # byte-level text has no spaces: ' ' is 'Ġ'
            merges.append(f"{text(parts[0])} {text(parts[1])}")
    added = [dict(id=i, content=s, single_word=False, lstrip=False, rstrip=False,
                  normalized=False, special=True)
             for s, i in specials.items()]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": False}
    split = {"type": "Split", "pattern": {"Regex": pat}, "behavior": "Isolated", "invert": False}
    # ignore_merges: a piece that is a whole token is that token, as in tiktoken
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
             "ignore_merges": True,
             "vocab": {text(t): r for t, r in ranks.items()}, "merges": merges}
    write_json(os.path.join(out_dir, "tokenizer.json"), {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]},
        "post_processor": None,  # nothing added around the text, like tiktoken's encode_ordinary
        "decoder": byte_level, "model": model}, indent=2)
    names = {k: v for k, v in dict(eos_token=EOT, pad_token="<|pad|>").items() if v in specials}
    write_json(os.path.join(out_dir, "tokenizer_config.json"), dict(
        tokenizer_class="PreTrainedTokenizerFast", clean_up_tokenization_spaces=False, **names),
        indent=2)
    write_json(os.path.join(out_dir, "special_tokens_map.json"), names, indent=2)
    return True


# -----------------------------------------------------------------------------
# train-tokenizer: a BPE for the corpus, and how many characters a token holds in each source

def train_tokenizer(docs_dir, path, vocab_size, sample_chars, seed=0, claim=None):
    """A BPE trained on a sample of docs_dir (stage.sample_documents: every source alike, up to
    sample_chars / sources characters each, never the whole corpus in memory); then characters
    per token per source, measured on held-out documents (on the sample when a source has no
    others), in path.report.json. Written beside path and renamed to path last: the .tiktoken
    file is there only when it is complete. A path.json or path.report.json that it did not
    write (what a killed run leaves is its own) is a DataError, never replaced. claim: the
    claims.Claim this worker trains under; a worker overtaken meanwhile (stopped past its lease)
    writes nothing, and its part files are its generation's own."""
    for side, field in ((path + ".json", "special_tokens"),
                        (path + ".report.json", "characters_per_token")):
        if os.path.lexists(side) and field not in json_dict(side):
            raise DataError(f"{side}: train-tokenizer did not write it (no {field!r} in it) and "
                            "would replace it; move it away, or choose another tokenizer path")
    sample, held, problems = sample_documents(docs_dir, sample_chars, seed)
    report_problems(problems, docs_dir)
    if not sample:
        raise DataError(f"{docs_dir}: no documents found "
                        "(looked for .jsonl, .jsonl.gz and .txt files)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    t0, part = time.time(), path + ".part" + (str(claim.gen) if claim and claim.gen else "")
    enc = train_bpe(sample, vocab_size, part)
    seconds = time.time() - t0
    report = {}
    for source, docs in sorted(held.items()):
        ids = enc.encode_ordinary_batch(docs)
        report[source] = sum(map(len, docs)) / max(1, sum(map(len, ids)))
        print(f"{source:12s} {report[source]:.2f} characters per token")
    if claim is not None and not claim.held():  # taken over: the new holder writes it
        for p in (part, part + ".json"):
            remove_if_there(p)
        return enc, report
    write_json(path + ".report.json",
               dict(characters_per_token=report, sample_characters=sum(map(len, sample)),
                    seconds=seconds, bytes=sum(len(t.encode()) for t in sample)))
    os.replace(part + ".json", path + ".json")
    os.replace(part, path)
    return enc, report
