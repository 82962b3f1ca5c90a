"""Two kinds of run:
    python -m pytest          everything that runs on a CPU; Triton kernels in the CPU interpreter
    python -m pytest -m gpu   on a CUDA machine: the compiled kernels, in bf16 and at long lengths
"""
import os, sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import data  # noqa: E402


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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """data/tiny prepared with a 512-token BPE (small, so test models are fast)."""
    out = str(tmp_path_factory.mktemp("data") / "tokens")
    data.prepare(os.path.join(ROOT, "data", "tiny"), out, "bpe", 512, 0.05)
    return out


def small_args(data_dir, out_dir, *overrides):
    """argv for train.main: the toy config shrunk so a step takes milliseconds."""
    return [os.path.join(ROOT, "config", "toy.py"), f"--data_dir={data_dir}", f"--raw_data={ROOT}/data/tiny",
            "--tokenizer_vocab=512", f"--out_dir={out_dir}", "--n_layer=2", "--d_model=32", "--n_head=2",
            "--ffn_hidden=64", "--seq_len=32", "--max_seq_len=64", "--batch_size=4", "--warmup_steps=2",
            "--log_interval=1", "--sample_tokens=0", "--eval_seqs=4", *overrides]
