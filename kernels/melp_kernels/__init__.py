"""Fused kernels of melp_fast, installed as the import package `melp_kernels`.

Each op lives in one file holding its Triton kernels, its autograd Function, a plain PyTorch reference and a
CPU-capable fallback, selected by an `impl` argument.
"""
