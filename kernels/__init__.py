"""Handwritten Triton kernels, each beside the torch code it replaces and is tested against.

flash_attention.py (flash attention forward and backward) and adamw.py (fused AdamW) come in
their own issues; model.py and train.py use torch's own ops until then.
"""
