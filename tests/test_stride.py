"""The stride trap: beat spans are in units of the encoder's tokens, so the training dataset must take its stride
from the model config. Change the conv stack and the spans must follow it."""

import numpy as np
import pytest
import torch
from helpers import tiny_cfg

from melp_fast.data.dataset import Collate
from melp_fast.data.store import build_synthetic_store
from melp_fast.model.melp import MELP
from melp_fast.train import train_dataset


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_synthetic_store(tmp_path_factory.mktemp("stride") / "s", "train", 6, seed=3, max_beats=32)


@pytest.mark.parametrize("conv_layers", [3, 4, 5])
def test_beat_spans_follow_the_conv_stack(store, conv_layers):
    cfg = tiny_cfg(conv_layers=conv_layers)
    cfg.data.lead_mask_p = 0.0
    torch.manual_seed(0)
    model = MELP(cfg.model).eval()
    ds = train_dataset(cfg, store)
    stride = 2 ** conv_layers
    assert ds.stride == model.ecg.stride == stride
    batch = Collate(model.tokenizer)(ds.batch(np.arange(len(ds))))
    with torch.no_grad():
        tokens = model.ecg(batch["ecg"])
    n_tokens = tokens.shape[1]
    assert ds.n_tokens == n_tokens == model.ecg.n_tokens(5000)
    _, sample_spans, n_beats = store.read(np.arange(len(ds)))
    checked = 0
    for i in range(len(ds)):
        for k in range(int(n_beats[i])):
            s, e = (int(v) for v in sample_spans[i, k])
            t0, t1 = (int(v) for v in batch["beat_spans"][i, k])
            assert batch["beat_mask"][i, k] and 0 <= t0 < t1 <= n_tokens
            if e - s >= stride and e <= stride * n_tokens:
                # token t covers samples [stride t, stride (t + 1)): the span covers the beat to within a token
                assert abs(stride * t0 - s) <= stride and abs(stride * t1 - e) <= stride, (i, k, s, e, t0, t1)
                # and exactly the tokens whose centre lies in the beat
                centres = stride * np.arange(t0, t1) + stride // 2
                assert ((centres >= s) & (centres < e)).all(), (i, k)
                checked += 1
    assert checked > 20
    out = model(batch)  # the model runs on these spans (beat pooling over real token ranges)
    assert torch.isfinite(out.beats).all()
