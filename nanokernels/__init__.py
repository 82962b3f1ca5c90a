"""Handwritten Triton kernels, each beside the torch code it replaces and is tested against.

flash_attention.py  flash attention forward and backward (model.py's attn_impl="triton")
adamw.py            fused AdamW with fused gradient clipping (train.py's optimizer="adamw_triton")

Their benchmarks and build check are in benchmarks/ (kernel_bench.py, gpu_check.py). The
folder's name is one that no installed distribution uses: transformers imports a PyPI
distribution named `kernels`, which a folder of that name would hide.
"""
