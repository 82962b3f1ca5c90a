"""Handwritten Triton kernels, each beside the torch code it replaces and is tested against.

flash_attention.py  flash attention forward and backward (model.py's attn_impl="triton")
adamw.py            fused AdamW with fused gradient clipping (train.py's optimizer="adamw_triton")
bench.py            their GPU benchmarks, a whole training step against transformers, and a compile check
"""
