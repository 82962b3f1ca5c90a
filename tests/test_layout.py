"""The shape of the tree: imports point one way, so each file reads without the ones above it:
the kernels, then config, then the model and the corpus plumbing (stage), then tokenizers,
checkpoints, tasks and the figures (plots), then data, then dedup, then decontamination, then
curation, training and evaluation, none of which imports another. No module of ours shares its import name with an
installed distribution or the standard library."""
import ast, glob, importlib.metadata, os, subprocess, sys

import pytest

from helpers import ROOT

LAYERS = {"nanokernels": 0, "config": 1, "guard": 1, "claims": 1, "sandbox": 1, "hf_modeling": 1, "model": 2, "stage": 2, "executor": 3, "fetch": 3, "kept": 3, "tokenizer": 3, "checkpoint": 3, "tasks": 3, "parallel": 3, "suites": 4, "gentasks": 4, "hf_llama": 4,
          "plots": 3, "data": 4, "dedup": 5, "decont": 6, "curate": 7, "train": 7, "eval": 7, "release": 8}


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel.split(".")[0]


def ours(name):
    """The layer key of an imported module name, None for anything not of this tree."""
    top = name.split(".")[0]
    return top if top in LAYERS else None


def imports(source):
    """Every module name imported anywhere in source, function bodies included."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports hide what a file depends on"
            yield node.module


def upward(path, source=None):
    """The imports of path that point up (or sideways, to another file of the same layer)."""
    me = module_of(path)
    bad = []
    for name in imports(source if source is not None else open(path, encoding="utf-8").read()):
        other = ours(name)
        if other is not None and other != me and LAYERS[other] >= LAYERS[me]:
            bad.append(name)
    return bad


FILES = sorted(glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "nanokernels", "*.py"))
               + glob.glob(os.path.join(ROOT, "config", "*.py")))


@pytest.mark.parametrize("path", FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_imports_point_down(path):
    assert module_of(path) in LAYERS, f"{path}: a new file needs its place in LAYERS"
    assert upward(path) == []


def test_the_check_catches_an_upward_import():
    # the ways a cycle crept in before: data.py importing train.py inside a function to read a config
    data_py = os.path.join(ROOT, "data.py")
    assert upward(data_py, "def show():\n    import train\n") == ["train"]
    assert upward(data_py, "from eval import load\n") == ["eval"]
    assert upward(os.path.join(ROOT, "model.py"), "import train\n") == ["train"]
    assert upward(os.path.join(ROOT, "nanokernels", "adamw.py"), "from train import clip_grads\n") == ["train"]
    assert upward(os.path.join(ROOT, "nanokernels", "flash_attention.py"), "import model\n") == ["model"]
    assert upward(os.path.join(ROOT, "config", "__init__.py"), "from model import GPT\n") == ["model"]
    assert upward(os.path.join(ROOT, "checkpoint.py"), "import tokenizer\n") == ["tokenizer"]  # same layer: no
    assert upward(os.path.join(ROOT, "checkpoint.py"), "from train import build_model\n") == ["train"]
    assert upward(os.path.join(ROOT, "eval.py"), "import train, data\n") == ["train"]  # eval reads no training code
    assert upward(os.path.join(ROOT, "stage.py"), "from data import read_shard\n") == ["data"]


OURS = {module_of(p) for p in FILES} | {"benchmarks", "tests"}


def shadowed(names):
    """{name: [distributions]} of the names that an installed distribution or the standard
    library also uses: run from the project root, a folder or file of ours comes first on
    sys.path and hides it (transformers 5.25 imports the `kernels` distribution)."""
    installed = importlib.metadata.packages_distributions()
    clash = {n: installed[n] for n in names if n in installed}
    return clash | {n: ["the standard library"] for n in names if n in sys.stdlib_module_names}


def test_no_module_of_ours_shadows_an_installed_one():
    assert shadowed(OURS) == {}


def test_the_name_check_catches_a_clash(tmp_path, monkeypatch):
    # a distribution installed under one of our names is caught: here `stage`, as a wheel lays it out
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "__init__.py").write_text("")
    info = tmp_path / "stage-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stage\nVersion: 1.0\n")
    (info / "RECORD").write_text("stage/__init__.py,,\nstage-1.0.dist-info/METADATA,,\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert shadowed(OURS) == {"stage": ["stage"]}
    assert shadowed({"kernels", "json"}) == {"json": ["the standard library"]} | (
        {"kernels": ["kernels"]} if "kernels" in importlib.metadata.packages_distributions() else {})


def test_the_data_side_loads_without_training_or_evaluation():
    # and without torch: a curation command does not pay seconds of import to read its config
    code = ("import sys, guard, stage, kept, fetch, tokenizer, data, dedup, decont, curate; "
            "bad = {'train', 'eval', 'model', 'checkpoint', 'torch'} & set(sys.modules); assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_figures_load_without_torch():
    # plots.py draws from JSON files: `eval.py plot` pays for torch only because eval.py does
    code = "import sys, plots; assert 'torch' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_kernels_folder_holds_the_kernels_only():
    names = sorted(f for f in os.listdir(os.path.join(ROOT, "nanokernels")) if f.endswith(".py"))
    assert names == ["__init__.py", "adamw.py", "flash_attention.py"]
    for f in ("adamw.py", "flash_attention.py"):  # and they import nothing of ours
        source = open(os.path.join(ROOT, "nanokernels", f), encoding="utf-8").read()
        assert [n for n in imports(source) if ours(n)] == []


def test_the_shipped_model_code_stands_alone():
    # hf_llama.py copies hf_modeling.py into exported folders, where transformers runs it away
    # from this tree: it imports torch and transformers only, and only hf_llama.py imports it,
    # inside the function that loads a folder in transformers (transformers stays optional)
    source = open(os.path.join(ROOT, "hf_modeling.py"), encoding="utf-8").read()
    assert {n.split(".")[0] for n in imports(source)} <= {"torch", "transformers"}
    importers = [os.path.relpath(p, ROOT) for p in FILES
                 if "hf_modeling" in imports(open(p, encoding="utf-8").read())]
    assert importers == ["hf_llama.py"]
    lines = open(os.path.join(ROOT, "hf_llama.py"), encoding="utf-8").read().splitlines()
    assert all(line.startswith(" ") for line in lines if "import" in line and "hf_modeling" in line)
