"""The one rule by which every op of melp_kernels picks its implementation (the contract of the three loss ops).

Each op declares its implementations (reference first) in OPS, and every entry point resolves its `impl` argument
here (`resolve_impl`), nowhere else:

    op              impls                          "auto" on CUDA (triton importable)    "auto" elsewhere
    infonce         reference, chunked, fused      fused                                 chunked
    local loss      reference, batched, fused      fused (batched when K or S > 128      batched
                                                   or |t1| > 80)
    caption head    reference, chunked             chunked                               chunked

- "reference": the literal PyTorch formulas (materialised logits, per-sample loops): the parity tests' truth;
- the op's fast PyTorch path ("chunked" / "batched"): blocks that never hold the large intermediate, any device;
- "fused": the op's Triton kernels, or a RuntimeError saying why they cannot run here. An op without kernels (the
  caption head: three GEMMs that cuBLAS already runs at tensor-core rate) has no "fused": asking for it is a
  ValueError naming the op and its impls;
- "auto": "fused" on CUDA tensors when triton is importable and the op has kernels, else the op's fast PyTorch path.

On CPU tensors the kernels run only under the Triton interpreter, which must be on (TRITON_INTERPRET=1) before the
kernel modules are imported (it decides how the kernels are defined): tests/conftest.py sets it on machines without
CUDA; the library never sets it. Exact but slow: a tool for parity tests, not for training.

The run-wide switch `loss.impl` ("reference" | "fused" | "auto"; melp_fast.losses.MELPLoss, --loss-impl) reaches
each op through `op_impl`: "reference" and "auto" as they are; "fused" is the fastest path each op has: the Triton
kernels of an op that has them (or the error above), the fast PyTorch path of one that has none (the caption
head runs "chunked"; it is never called "fused").
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch

try:  # triton is optional: "reference" and the PyTorch-block paths need only torch
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the environment
    HAS_TRITON = False


def interpreting() -> bool:
    """True when Triton kernels defined from now on run under the interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# whether the kernels were defined for the interpreter: the kernel modules import this module just before they
# define their kernels, so this is the setting they were defined under
KERNELS_INTERPRETED = HAS_TRITON and interpreting()


class Op(NamedTuple):
    name: str  # as errors name it
    impls: tuple[str, ...]  # reference first; "fused" when the op has Triton kernels
    fast: str  # the fast PyTorch path: what "auto" runs off CUDA

    @property
    def kernels(self) -> bool:
        return "fused" in self.impls

    @property
    def choices(self) -> tuple[str, ...]:
        return (*self.impls, "auto")


OPS = {op.name: op for op in (Op("infonce", ("reference", "chunked", "fused"), "chunked"),
                              Op("local loss", ("reference", "batched", "fused"), "batched"),
                              Op("caption head", ("reference", "chunked"), "chunked"))}


def resolve_impl(op: str, impl: str, device: torch.device) -> str:
    """The implementation op `op` (a name in OPS) runs for `impl` on tensors on `device` (module docstring)."""
    o = OPS[op]
    if impl not in o.choices:
        why = " (it has no Triton kernels)" if impl == "fused" else ""
        raise ValueError(f"{op}: unknown impl {impl!r}{why}; choose one of {', '.join(o.choices)}")
    if impl == "auto":
        return "fused" if o.kernels and device.type == "cuda" and HAS_TRITON else o.fast
    if impl == "fused":
        if not HAS_TRITON:
            raise RuntimeError(f"{op}: impl 'fused' needs triton, which is not importable here; "
                               f"use impl 'auto' (the '{o.fast}' PyTorch path off CUDA) or install triton")
        if device.type != "cuda" and not (interpreting() and KERNELS_INTERPRETED):
            raise RuntimeError(f"{op}: impl 'fused' on {device.type} tensors needs the Triton interpreter "
                               f"(TRITON_INTERPRET=1 before melp_kernels is imported); use impl 'auto' to run "
                               f"the '{o.fast}' PyTorch path off CUDA")
    return impl


def op_impl(op: str, run_impl: str) -> str:
    """The impl op `op` gets from the run-wide switch loss.impl: "fused" is the op's fastest path (its kernels, or
    its fast PyTorch path when it has none); any other value is passed on as it is (resolve_impl checks it)."""
    o = OPS[op]
    return o.fast if run_impl == "fused" and not o.kernels else run_impl
