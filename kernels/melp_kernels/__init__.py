"""Fused kernels of melp_fast, installed as the import package `melp_kernels`.

Each op lives in one file holding its PyTorch reference, its fast PyTorch path and, where it has them, its Triton
kernels (infonce.py, local_loss.py; caption_head.py has none), selected by an `impl` argument by the one rule of
_dispatch.py.
"""
