"""The model's pieces: token count, beat pooling, masking of empty reports / beat-less ECGs, causality, export."""

import math

import pytest
import torch

from melp_fast.losses import MELPLoss
from melp_kernels.caption_head import caption_head_loss
from melp_fast.model.melp import MELP
from melp_fast.model.pooling import span_mean
from helpers import tiny_cfg


def make_batch(model, reports, n_beats, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(reports)
    k = max(max(n_beats), 1)
    starts = torch.randint(0, 280, (b, k), generator=g)
    spans = torch.stack([starts, starts + torch.randint(1, 30, (b, k), generator=g)], -1)
    mask = torch.arange(k)[None, :] < torch.tensor(n_beats)[:, None]
    return {"ecg": torch.rand(b, 12, 5000, generator=g), "beat_spans": spans, "beat_mask": mask, **model.tokenizer(reports)}


def test_span_mean_matches_loop():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(3, 40, 8, generator=g)
    spans = torch.tensor([[[0, 5], [5, 6], [39, 40]], [[10, 30], [0, 40], [3, 3]], [[7, 9], [1, 2], [20, 25]]])
    out = span_mean(tokens, spans)
    for b in range(3):
        for j in range(3):
            s, e = spans[b, j].tolist()
            want = tokens[b, s:e].mean(0) if e > s else torch.zeros(8)
            torch.testing.assert_close(out[b, j], want, rtol=1e-5, atol=1e-5)


def test_encoder_makes_312_tokens():
    cfg = tiny_cfg()
    model = MELP(cfg.model)
    assert model.ecg(torch.rand(2, 12, 5000)).shape == (2, 312, cfg.model.width)
    assert model.ecg.n_tokens(5000) == 312 and model.ecg.stride == 16


@pytest.mark.parametrize("pooling", ["beats", "queries"])
def test_rows_are_independent_and_empty_rows_masked(pooling):
    """An empty report and a beat-less ECG are masked and change no other row's outputs."""
    torch.manual_seed(0)
    model = MELP(tiny_cfg(beat_pooling=pooling).model).eval()
    reports = ["sinus rhythm. left bundle branch block.", "", "atrial fibrillation. low qrs voltages.", "normal ecg."]
    batch = make_batch(model, reports, [5, 3, 0, 4], seed=3)
    with torch.no_grad():
        full = model(batch)
    assert not full.sent_mask[1].any() and full.sent_mask[0].sum() == 2
    if pooling == "beats":
        assert not full.beat_mask[2].any() and full.beat_mask[0].sum() == 5
    for key in ("rhythm", "text"):
        assert torch.isfinite(getattr(full, key)).all()
    # rows 0 and 3 computed in a batch of their own give the same outputs
    with torch.no_grad():
        pick = {k: v[[0, 3]] for k, v in batch.items()}
        pick.update(model.tokenizer([reports[0], reports[3]]))
        alone = model(pick)
    torch.testing.assert_close(alone.rhythm, full.rhythm[[0, 3]], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone.text, full.text[[0, 3]], rtol=1e-4, atol=1e-5)
    n = full.sents.shape[1]
    torch.testing.assert_close(alone.sents[:, :n], full.sents[[0, 3]][:, : alone.sents.shape[1]], rtol=1e-4, atol=1e-5)


def test_text_encoder_is_causal():
    torch.manual_seed(0)
    model = MELP(tiny_cfg().model).eval()
    b = model.tokenizer(["sinus rhythm. left bundle branch block. abnormal ecg."])
    with torch.no_grad():
        s1 = model.text.backbone(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        ids = b["input_ids"].clone()
        ids[0, 6] = 2000
        s2 = model.text.backbone(input_ids=ids, attention_mask=b["attention_mask"]).last_hidden_state
    torch.testing.assert_close(s1[0, :6], s2[0, :6])
    assert not torch.allclose(s1[0, 6:], s2[0, 6:])


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_caption_loss_by_hand(impl):
    # two targets over a vocabulary of 3; logits chosen so the softmax is easy to write down (the head's weight is
    # the identity, so the states are the logits)
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0], [5.0, 1.0, 2.0]])
    labels = torch.tensor([2, 0, -100])
    # -log(1/3) and -log(2/4)
    want = 0.5 * (math.log(3.0) + math.log(2.0))
    assert abs(caption_head_loss(logits, torch.eye(3), labels, impl=impl).item() - want) < 1e-6
    assert caption_head_loss(logits, torch.eye(3), torch.full((3,), -100), impl=impl).item() == 0.0


def test_loss_impls_agree_on_model_outputs():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = MELP(cfg.model).eval()  # eval: no dropout, so both passes see the same outputs (grads still flow)
    reports = ["sinus rhythm. left bundle branch block.", "", "atrial fibrillation. low qrs voltages.", "normal ecg.",
               "sinus bradycardia. first degree av block. abnormal ecg."]
    batch = make_batch(model, reports, [5, 3, 0, 4, 7], seed=5)
    grads = {}
    for impl in ("reference", "auto"):  # auto: the kernels on CUDA, the PyTorch-block paths on CPU
        cfg.loss.impl = impl
        model.zero_grad()
        out = model(batch)
        losses = MELPLoss(cfg.loss)(out, batch)
        losses["loss"].backward()
        grads[impl] = (losses, [p.grad.clone() for p in model.parameters() if p.grad is not None])
    (la, ga), (lb, gb) = grads["reference"], grads["auto"]
    for k in ("loss", "global", "local", "caption"):
        assert abs(la[k].item() - lb[k].item()) <= 1e-4 * abs(la[k].item()) + 1e-6, k
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-6)


def test_paper_preset_matches_the_reference_small_configuration():
    from melp_fast.config import get_preset

    cfg = get_preset("paper")
    m = cfg.model
    assert (m.conv_channels, m.conv_layers, m.width, m.layers, m.heads, m.ffn) == (256, 4, 768, 8, 12, 3072)
    assert (m.caption_queries, m.decoder_layers, m.decoder_heads, m.embed_dim) == (128, 6, 8, 256)
    assert (cfg.loss.global_weight, cfg.loss.caption_weight, cfg.loss.local_weight) == (1.0, 2.0, 0.2)
    assert (cfg.loss.t1, cfg.loss.t2, cfg.loss.t3) == (4.0, 5.0, 10.0)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.betas, cfg.train.batch_size) == (2e-4, 0.2, (0.9, 0.95), 64)
    cfg.model.text_encoder = "random:tiny"
    cfg.model.text_freeze_layers = 1
    model = MELP(cfg.model).eval()
    batch = make_batch(model, ["sinus rhythm. normal ecg.", "atrial fibrillation."], [3, 2])
    with torch.no_grad():
        out = model(batch)
    assert out.rhythm.shape == (2, 256) and out.beats.shape == (2, 3, 256)
    assert model.decoder.head(out.caption_hidden).shape[-1] == model.text.vocab_size
    # the conv stack has 12*256*2 + 3 * 256*256*2 weights (no bias) and GroupNorm's 2*256
    conv = sum(p.numel() for p in model.ecg.features.parameters())
    assert conv == 12 * 256 * 2 + 3 * 256 * 256 * 2 + 2 * 256


def test_attention_backends():
    from melp_fast.model import attention as A

    with pytest.raises(ValueError, match="sdpa"):
        A.set_backend("xformers")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 1, 5, generator=g) > 0.3
    mask[..., 0] = True
    ref = torch.softmax((q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~mask, float("-inf")), -1) @ v
    torch.testing.assert_close(A.attention(q, k, v, mask), ref, rtol=1e-5, atol=1e-6)
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="flash-attn"):
            A.set_backend("flash_attn")
        return
    if torch.cuda.is_available():  # flash-attn vs SDPA within bf16 tolerance
        A.set_backend("flash_attn")
        try:
            qc, kc, vc = (x.cuda().bfloat16() for x in (q, k, v))
            out = A.attention(qc, kc, vc, causal=True)
            want = torch.nn.functional.scaled_dot_product_attention(qc, kc, vc, is_causal=True)
            torch.testing.assert_close(out.float(), want.float(), rtol=2e-2, atol=2e-2)
        finally:
            A.set_backend("sdpa")


def test_every_python_package_is_declared_in_pyproject():
    """A non-editable install ships only the packages pyproject lists: none may be forgotten."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    declared = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "melp_fast").rglob("__init__.py")}
    assert found <= declared, found - declared
    assert "melp_kernels" in declared
