"""The shape of the tree: imports point one way, so each file reads without the ones above it:
the kernels, then config, then the model, then data, then curation and checkpoints, then
training, then evaluation and the benchmarks."""
import ast, glob, os, subprocess, sys

import pytest

from conftest import ROOT

LAYERS = {"kernels": 0, "config": 1, "model": 2, "data": 3, "checkpoint": 4, "curate": 4, "train": 5, "eval": 6,
          "kernels.bench": 7}


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    if rel == "kernels.bench":
        return rel
    return rel.split(".")[0] if rel.startswith(("kernels.", "config.")) else rel.replace(".__init__", "")


def ours(name):
    """The layer key of an imported module name, None for anything not of this tree."""
    if name == "kernels.bench":
        return name
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


FILES = sorted(glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "kernels", "*.py"))
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
    assert upward(os.path.join(ROOT, "kernels", "adamw.py"), "from train import clip_grads\n") == ["train"]
    assert upward(os.path.join(ROOT, "kernels", "flash_attention.py"), "import model\n") == ["model"]
    assert upward(os.path.join(ROOT, "config", "__init__.py"), "from model import GPT\n") == ["model"]  # config needs no torch
    assert upward(os.path.join(ROOT, "checkpoint.py"), "import curate\n") == ["curate"]  # same layer: no
    assert upward(os.path.join(ROOT, "checkpoint.py"), "from train import build_model\n") == ["train"]
    assert upward(os.path.join(ROOT, "eval.py"), "import train, data\n") == []


def test_the_data_side_loads_without_training_or_evaluation():
    # and without torch: a curation command does not pay seconds of import to read its config
    code = ("import sys, data, curate; bad = {'train', 'eval', 'model', 'torch'} & set(sys.modules); "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
