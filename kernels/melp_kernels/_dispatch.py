"""One implementation switch for every op in melp_kernels.

Each op offers "reference" (literal PyTorch), a PyTorch-block path (its `fallback`: "chunked", "batched", ...),
"fused" (its Triton kernels) and "auto":
- "auto": the kernels on CUDA tensors when triton is importable, the PyTorch-block path everywhere else;
- "fused": the kernels, or a RuntimeError that says why they cannot run. On CPU tensors the kernels run only under
  the Triton interpreter (TRITON_INTERPRET=1 before the kernels are defined; melp_kernels/__init__.py sets it on
  machines without CUDA): exact but slow, a tool for parity tests, not for training.
"""

from __future__ import annotations

import os

import torch

try:  # triton is optional: "reference" and the PyTorch-block paths need only torch
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the environment
    HAS_TRITON = False


def interpreting() -> bool:
    """True when Triton kernels defined from now on run under the interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve_impl(op: str, impl: str, device: torch.device, impls: tuple[str, ...], fallback: str) -> str:
    """The implementation `op` runs for `impl` on tensors on `device` (see the module docstring)."""
    if impl not in impls:
        raise ValueError(f"{op}: unknown impl {impl!r}; choose one of {', '.join(impls)}")
    if impl == "auto":
        return "fused" if device.type == "cuda" and HAS_TRITON else fallback
    if impl == "fused":
        if not HAS_TRITON:
            raise RuntimeError(f"{op}: impl 'fused' needs triton, which is not importable here; "
                               f"use impl 'auto' (the '{fallback}' PyTorch path off CUDA) or install triton")
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(f"{op}: impl 'fused' on {device.type} tensors needs the Triton interpreter "
                               f"(TRITON_INTERPRET=1 before melp_kernels is imported); use impl 'auto' to run "
                               f"the '{fallback}' PyTorch path off CUDA")
    return impl
