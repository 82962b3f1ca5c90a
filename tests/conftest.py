"""Two kinds of run:
    python -m pytest          everything that runs on a CPU; Triton kernels in the CPU interpreter
    python -m pytest -m gpu   on a CUDA machine: the compiled kernels, in bf16 and at long lengths
What tests and benchmarks share is in helpers.py.
"""
import os, subprocess

import pytest
import torch

from helpers import ROOT, tokenize_tiny


def gpu_run(config):
    return "gpu" in (config.option.markexpr or "") and "not gpu" not in config.option.markexpr


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU and compiled kernels (run with -m gpu)")
    # one process saves and loads through torch.distributed.checkpoint, as intended (checkpoint.py says so too)
    config.addinivalue_line("filterwarnings", "ignore:torch.distributed is disabled, unavailable or uninitialized")
    if not gpu_run(config):  # before any test module imports triton
        os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    why = "needs a CUDA GPU" if not torch.cuda.is_available() else \
        "compiled kernels: run with -m gpu" if os.environ.get("TRITON_INTERPRET") == "1" else None
    for item in items:
        if why and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=why))


def written_in_project():
    """What git would not track in the project (ignored or new), caches aside."""
    r = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=ROOT,
                       capture_output=True, text=True)
    return {l[3:] for l in r.stdout.splitlines()
            if l[:2] in ("??", "!!") and "__pycache__" not in l and ".pytest_cache" not in l}


@pytest.fixture(scope="session", autouse=True)
def tests_write_only_in_their_tmp_path():
    """No test writes into the project (data/tiny/tokens, out/, benchmarks/): all in tmp_path."""
    before = written_in_project()
    yield
    new = written_in_project() - before
    assert not new, f"tests wrote into the project: {sorted(new)[:10]}"


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """data/tiny tokenized with a 512-token BPE (small, so test models are fast)."""
    out = str(tmp_path_factory.mktemp("data") / "tokens")
    tokenize_tiny(out)
    return out


@pytest.fixture(scope="session")
def enc(tiny_data):
    """tiny_data's tokenizer, as a run on it reads it."""
    import data, tokenizer
    return tokenizer.tokenizer_of(tiny_data, data.load_manifest(tiny_data, hash_shards=False))
