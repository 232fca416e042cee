"""A dispatch mode that finds host synchronisation and data-dependent shapes (tests/test_no_sync.py uses it).

`HostSyncCheck` records every op that reads a tensor's value on the host or gives an output whose shape depends on
values: ops tagged data_dependent_output (aten._local_scalar_dense under .item() / int() / bool() / `if t.any()`,
aten.equal, ...) or dynamic_output_shape (nonzero, masked_select, unique, ...), boolean-mask indexing (aten.index
or index_put_ with a bool index tensor: a hidden nonzero), and the Python-level reads that never reach the
dispatcher (Tensor.tolist, .numpy, __array__), which it patches for its duration. Each finding names the op and
the line of melp_fast / melp_kernels / transformers code that issued it.
"""

from __future__ import annotations

import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
_BOOL_INDEXED = {_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default,
                 _aten._index_put_impl_.default}
_PY_READS = ("tolist", "numpy", "__array__")


def _where() -> str:
    """The innermost frame of project (or transformers) code on the stack."""
    frames = traceback.extract_stack()[:-3]
    for f in reversed(frames):
        if any(k in f.filename for k in ("melp_fast", "melp_kernels", "transformers")) and "no_sync" not in f.filename:
            return f"{f.filename.split('/wt_sync/')[-1]}:{f.lineno} ({f.line})"
    return "?"


class HostSyncCheck(TorchDispatchMode):
    """with HostSyncCheck() as c: ...; c.found lists (op, where); strict=True raises at the first one."""

    def __init__(self, strict: bool = False):
        super().__init__()
        self.strict, self.found, self.ops = strict, [], 0
        self._saved = {}

    def _hit(self, what: str):
        item = (what, _where())
        self.found.append(item)
        if self.strict:
            raise AssertionError(f"host synchronisation / data-dependent shape: {what} at {item[1]}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        if func in _BOOL_INDEXED:
            idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in idx):
                self._hit(f"{func} with a boolean mask")
        elif torch.Tag.data_dependent_output in func.tags or torch.Tag.dynamic_output_shape in func.tags:
            self._hit(str(func))
        return func(*args, **kwargs)

    def __enter__(self):
        for name in _PY_READS:
            orig = self._saved[name] = getattr(torch.Tensor, name)

            def read(t, *a, _orig=orig, _name=name, **k):
                self._hit(f"Tensor.{_name}")
                return _orig(t, *a, **k)

            setattr(torch.Tensor, name, read)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, orig in self._saved.items():
            setattr(torch.Tensor, name, orig)
        return super().__exit__(*exc)
