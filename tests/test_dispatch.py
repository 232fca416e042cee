"""The one contract of the three loss ops (melp_kernels/_dispatch.py): the impls each op declares, what "auto"
picks per device, "fused" refused by name where an op has no kernels, and how the run-wide loss.impl reaches
each op."""

import pytest
import torch

from melp_fast.config import LOSS_IMPLS
from melp_fast.losses import MELPLoss
from melp_kernels import _dispatch, caption_head, infonce, local_loss
from melp_kernels._dispatch import OPS, op_impl, resolve_impl

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # device objects only: nothing runs on them here


def test_every_op_declares_its_impls_and_its_entry_point_takes_them():
    assert {name: op.choices for name, op in OPS.items()} == {
        "infonce": ("reference", "chunked", "fused", "auto"),
        "local loss": ("reference", "batched", "fused", "auto"),
        "caption head": ("reference", "chunked", "auto"),
    }
    assert tuple(infonce.IMPLS) == OPS["infonce"].choices
    assert tuple(local_loss.IMPLS) == OPS["local loss"].choices
    assert tuple(caption_head.IMPLS) == OPS["caption head"].choices


@pytest.mark.parametrize("has_triton", [True, False])
def test_auto_picks_the_kernels_on_cuda_and_the_fast_pytorch_path_elsewhere(has_triton, monkeypatch):
    monkeypatch.setattr(_dispatch, "HAS_TRITON", has_triton)
    want_cuda = {"infonce": "fused" if has_triton else "chunked", "local loss": "fused" if has_triton else "batched",
                 "caption head": "chunked"}
    want_cpu = {"infonce": "chunked", "local loss": "batched", "caption head": "chunked"}
    assert {op: resolve_impl(op, "auto", CUDA) for op in OPS} == want_cuda
    assert {op: resolve_impl(op, "auto", CPU) for op in OPS} == want_cpu
    for op, o in OPS.items():  # the named impls other than fused are taken as they are, on any device
        for impl in o.impls:
            if impl != "fused":
                assert resolve_impl(op, impl, CUDA) == resolve_impl(op, impl, CPU) == impl


def test_errors_name_the_op_and_its_impls(monkeypatch):
    with pytest.raises(ValueError, match=r"^caption head: unknown impl 'fused' \(it has no Triton kernels\); "
                                         r"choose one of reference, chunked, auto$"):
        resolve_impl("caption head", "fused", CUDA)
    with pytest.raises(ValueError, match=r"^local loss: unknown impl 'chunked'; choose one of reference, batched, "
                                         r"fused, auto$"):
        resolve_impl("local loss", "chunked", CPU)
    monkeypatch.setattr(_dispatch, "HAS_TRITON", False)
    with pytest.raises(RuntimeError, match=r"^infonce: impl 'fused' needs triton"):
        resolve_impl("infonce", "fused", CUDA)
    monkeypatch.setattr(_dispatch, "HAS_TRITON", True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match=r"^local loss: impl 'fused' on cpu tensors needs the Triton interpreter"):
        resolve_impl("local loss", "fused", CPU)


def test_the_run_wide_switch_reaches_each_op():
    # "fused" is the fastest path each op has: the kernels where there are some, the chunked caption head else
    assert LOSS_IMPLS == ("reference", "fused", "auto")
    got = {run: {op: op_impl(op, run) for op in OPS} for run in LOSS_IMPLS}
    assert got == {"reference": dict.fromkeys(OPS, "reference"), "auto": dict.fromkeys(OPS, "auto"),
                   "fused": {"infonce": "fused", "local loss": "fused", "caption head": "chunked"}}
    for run in LOSS_IMPLS:  # every value of the switch is an impl every op accepts
        assert all(got[run][op] in OPS[op].choices for op in OPS)
    from melp_fast.config import LossConfig

    assert MELPLoss(LossConfig(impl="fused")).impl == got["fused"]
