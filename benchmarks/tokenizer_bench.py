"""
Reading a released tokenizer.json: tokenizer.HFTokenizer (the tokenizers library, as transformers'
PreTrainedTokenizerFast runs the file) against tiktoken on the same byte-level vocabulary (our
BPE, exported by tokenizer.export_tokenizer), and against transformers' AutoTokenizer (what lm-eval
tokenizes with), on data/tiny repeated; a LLaMA-layout tokenizer.json (SentencePiece-style BPE
with byte fallback, as Amber's) beside them. Checks the ids agree, then prints MB/s.

    python benchmarks/tokenizer_bench.py [--repeat 8] [--vocab 4096]
"""
import argparse, json, os, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import tokenizer  # noqa: E402


def best_of(fn, n=3):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=8, help="copies of data/tiny's documents")
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()
    import tokenizers, tiktoken, transformers
    from helpers import llama_tokenizer
    texts = [json.loads(line)["text"] for f in ("en", "zh", "code")
             for line in open(os.path.join(HERE, "..", "data", "tiny", f + ".jsonl"))]
    docs = texts * args.repeat
    mb = sum(len(t.encode()) for t in docs) / 1e6
    d = tempfile.mkdtemp()
    enc = tokenizer.train_bpe(texts, args.vocab, os.path.join(d, "bpe.tiktoken"))
    tokenizer.export_tokenizer(*tokenizer.read_tiktoken(os.path.join(d, "bpe.tiktoken")), d)
    ours_json = tokenizer.load_tokenizer(d)
    llama = tokenizer.load_tokenizer(llama_tokenizer(os.path.join(d, "llama"), args.vocab))
    peer = lambda folder: transformers.AutoTokenizer.from_pretrained(folder)
    hf_bpe, hf_llama = peer(d), peer(os.path.join(d, "llama"))
    want = enc.encode_ordinary_batch(docs)
    assert ours_json.encode_ordinary_batch(docs) == want, "tokenizer.json and tiktoken disagree"
    assert hf_bpe(docs, add_special_tokens=False)["input_ids"] == want, "transformers and tiktoken disagree"
    assert llama.encode_ordinary_batch(docs) == hf_llama(docs, add_special_tokens=False)["input_ids"]
    cases = [
        ("byte-level BPE", "tiktoken (.tiktoken)", lambda: enc.encode_ordinary_batch(docs)),
        ("byte-level BPE", "HFTokenizer (tokenizer.json)", lambda: ours_json.encode_ordinary_batch(docs)),
        ("byte-level BPE", "transformers AutoTokenizer", lambda: hf_bpe(docs, add_special_tokens=False)),
        ("LLaMA layout", "HFTokenizer (tokenizer.json)", lambda: llama.encode_ordinary_batch(docs)),
        ("LLaMA layout", "transformers AutoTokenizer", lambda: hf_llama(docs, add_special_tokens=False)),
    ]
    print(f"{mb:.1f} MB of data/tiny ({len(docs)} documents), {os.cpu_count()} cores; tiktoken {tiktoken.__version__}, "
          f"tokenizers {tokenizers.__version__}, transformers {transformers.__version__}; "
          f"vocab {enc.n_vocab} (byte-level), {llama.n_vocab} (LLaMA layout); ids identical where compared")
    print("| vocabulary | reader | seconds | MB/s | vs tiktoken |\n|---|---|---|---|---|")
    base = None
    for vocab, name, fn in cases:
        s = best_of(fn)
        base = base or s
        print(f"| {vocab} | {name} | {s:.3f} | {mb / s:.1f} | {base / s:.2f}x |")


if __name__ == "__main__":
    main()
