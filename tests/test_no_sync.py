"""The training forward, MELPLoss and backward never read a tensor on the host and keep static shapes
(no host sync, so CUDA graphs and torch.compile can capture the step).

Run under tests/no_sync.py's HostSyncCheck: any op tagged data_dependent_output (aten._local_scalar_dense behind
.item() / int() / bool(), aten.equal), dynamic_output_shape (nonzero, masked_select, unique, ...), boolean-mask
indexing (aten.index / index_put with a bool index) and Tensor.tolist / .numpy fail the test with the line that
issued them. Batches hold an empty report and a beat-less ECG (the rows that used to take host-side branches).
Paper preset at batch 3 with a random 2-layer text encoder (offline, seconds). Loss impl "auto": on CPU the
PyTorch-block paths; on CUDA (when present) the Triton kernels, whose launches do not go through the dispatcher.
"""

import pytest
import torch

from helpers import tiny_cfg
from melp_fast.losses import MELPLoss
from melp_fast.model.melp import MELP
from no_sync import HostSyncCheck
from test_model import make_batch

SEED = 0
REPORTS = ["sinus rhythm. left bundle branch block.", "", "atrial fibrillation. low qrs voltages. abnormal ecg.",
           "normal ecg."]


def preset_cfg(preset: str):
    if preset == "tiny":
        return tiny_cfg()
    from melp_fast.config import get_preset

    cfg = get_preset("paper")
    cfg.model.text_encoder = "random:tiny"
    cfg.model.text_freeze_layers = 1
    return cfg


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def step_under_check(model, cfg, batch):
    with HostSyncCheck() as check:
        out = model(batch)
        losses = MELPLoss(cfg.loss)(out, batch)
        losses["loss"].backward()
    return out, losses, check


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("preset,n", [("tiny", 4), ("paper", 3)])
def test_forward_loss_backward_never_sync_with_the_host(preset, n, device):
    print(f"seed {SEED}")
    torch.manual_seed(SEED)
    cfg = preset_cfg(preset)
    cfg.loss.impl = "auto"
    model = MELP(cfg.model).to(device).train()
    batch = make_batch(model, REPORTS[:n], [5, 3, 0, 4][:n], seed=SEED)
    batch = {k: v.to(device) for k, v in batch.items()}
    out, losses, check = step_under_check(model, cfg, batch)
    assert check.ops > 500  # the mode saw the step
    assert check.found == [], "\n".join(f"{what} at {where}" for what, where in check.found)
    assert torch.isfinite(losses["loss"]).item()
    assert not out.sent_mask[1].any() and not out.beat_mask[2].any()


def test_shapes_depend_only_on_the_input_shapes():
    """Two batches of one padded shape but different contents (sentence counts, beats, report lengths) give
    outputs of one shape: sentence slots = model.max_sentences, caption rows = B x L."""
    torch.manual_seed(SEED)
    cfg = tiny_cfg()
    model = MELP(cfg.model).eval()
    a = make_batch(model, ["sinus rhythm.", "", "normal ecg. abnormal ecg."], [2, 0, 3], seed=1)
    b = make_batch(model, ["atrial fibrillation. low qrs voltages. left axis deviation. abnormal ecg.", "a.", "b."],
                   [3, 3, 1], seed=2)
    L = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    for batch in (a, b):  # pad both to one length, as train.static_shapes does
        for key, fill in (("input_ids", 0), ("attention_mask", 0), ("sent_ids", -1), ("caption_labels", -100)):
            batch[key] = torch.nn.functional.pad(batch[key], (0, L - batch[key].shape[1]), value=fill)
    with torch.no_grad():
        oa, ob = model(a), model(b)
    for key in ("rhythm", "beats", "text", "sents", "sent_mask", "caption_hidden", "caption_targets"):
        assert getattr(oa, key).shape == getattr(ob, key).shape, key
    assert oa.sents.shape[1] == cfg.model.max_sentences
    assert oa.caption_hidden.shape[0] == 3 * L


def test_caption_tokens_packs_targets_without_changing_the_loss():
    """model.caption_tokens = n: the positions with a target first, B x n rows; the loss equals the all-rows loss
    while nothing is dropped, and the excess is counted when n is too small."""
    torch.manual_seed(SEED)
    cfg = tiny_cfg()
    model = MELP(cfg.model).eval()
    batch = make_batch(model, REPORTS, [5, 3, 0, 4], seed=SEED)
    n_targets = int((batch["caption_labels"] != -100).sum())
    longest = int((batch["caption_labels"] != -100).sum(1).max())
    with torch.no_grad():
        full = MELPLoss(cfg.loss)(model(batch), batch)
        for n, dropped in ((longest, 0), (2, n_targets - 2 * 4)):
            model.cfg.caption_tokens = n
            out = model(batch)
            assert out.caption_hidden.shape[0] == 4 * n
            losses = MELPLoss(cfg.loss)(out, batch)
            assert int(losses["caption_dropped"]) == dropped
            if dropped == 0:
                torch.testing.assert_close(losses["caption"], full["caption"], rtol=1e-5, atol=1e-6)
    model.cfg.caption_tokens = 2
    _, _, check = step_under_check(model.train(), cfg, batch)
    assert check.found == []


def test_the_check_catches_host_reads():
    """The mode is not blind: each way a host read hides in model code is reported."""
    x = torch.arange(6.0)
    m = x > 2
    cases = {"if t.any()": lambda: bool(m.any()), "int(t.max())": lambda: int(x.max()), "x[mask]": lambda: x[m],
             "nonzero": lambda: m.nonzero(), "tolist": lambda: x.tolist(), "x[mask] = 0": lambda: x.clone().index_put_(
                 (m,), torch.tensor(0.0)), "masked_select": lambda: x.masked_select(m), "numpy": lambda: x.numpy()}
    for name, fn in cases.items():
        with HostSyncCheck() as check:
            fn()
        assert check.found, name
    with HostSyncCheck() as check:  # integer gathers, where and reductions kept on the device are fine
        torch.where(m, x, 0.0).sum() + x[torch.tensor([0, 2])].sum() + x.index_select(0, torch.tensor([1]))
    assert check.found == []
    with pytest.raises(AssertionError, match="_local_scalar_dense"):
        with HostSyncCheck(strict=True):
            x.sum().item()


def test_throughput_op_counter_leaves_out_ops_that_launch_nothing():
    """benchmarks/throughput.py's launch count: views, reshapes, transposes, expand, detach, empty allocations are
    not counted; arithmetic, copies and casts are."""
    from benchmarks.throughput import op_counter

    x = torch.randn(4, 6)
    with op_counter() as c:
        y = x.view(6, 4).reshape(24).unsqueeze(0).expand(3, 24).detach().t()  # reshape of a contiguous view
        torch.empty(5)
        _ = x[1:3], x.transpose(0, 1), x.shape, x.size(0)
    assert sum(c.ops.values()) == 0, c.ops
    with op_counter() as c:
        (x * 2 + 1).sum()
        y.contiguous()
        x.double()
    assert dict(c.ops) == {"mul": 1, "add": 1, "sum": 1, "clone": 1, "_to_copy": 1}, c.ops
