"""Beat timing as a model input (model.beat_timing): the features by hand, odd shapes, gradients, tokens, and models
saved before the switch existed."""

import json
import math

import numpy as np
import pytest
import torch

from melp_fast.model.beat_timing import FEATURES, BeatTimingEmbedding, beat_timing_features, masked_median, spread_to_tokens
from melp_fast.model.melp import MELP
from helpers import rng_for, seed_for, tiny_cfg

SPT = 16 / 500  # seconds per token


def test_features_equal_a_hand_computation():
    # six beats tiling tokens 0-100; interior beats 1-4 last 20, 19, 21, 20 tokens; the edges are clipped spans
    spans = torch.tensor([[[0, 10], [10, 30], [30, 49], [49, 70], [70, 90], [90, 100]]])
    f, timed = beat_timing_features(spans, torch.ones(1, 6, dtype=torch.bool), SPT)
    col = {name: f[0, :, i].tolist() for i, name in enumerate(FEATURES)}
    d = [20, 20, 19, 21, 20, 20]  # the edges take their interior neighbour's duration
    assert timed.all()
    assert col["log_interval"] == pytest.approx([math.log(n * SPT) for n in d], abs=1e-6)
    med = math.log(20 * SPT)  # median of 20, 19, 21, 20 tokens
    assert col["log_rel"] == pytest.approx([4 * (math.log(n * SPT) - med) for n in d], abs=1e-5)
    prev = [0.0] + [4 * math.log(d[i] / d[i - 1]) for i in range(1, 6)]
    nxt = [4 * math.log(d[i + 1] / d[i]) for i in range(5)] + [0.0]
    assert col["log_prev"] == pytest.approx(prev, abs=1e-5)
    assert col["log_next"] == pytest.approx(nxt, abs=1e-5)
    steps = sorted(abs(math.log(b / a)) for a, b in [(20, 19), (19, 21), (21, 20)])
    assert col["irregularity"] == pytest.approx([10 * steps[1]] * 6, abs=1e-5)
    assert col["irregularity_mean"] == pytest.approx([10 * sum(steps) / 3] * 6, abs=1e-5)
    lag2 = sorted([abs(math.log(21 / 20)), abs(math.log(20 / 19))])  # beats 1 -> 3 and 2 -> 4
    assert col["irregularity_lag2"] == pytest.approx([10 * sum(lag2) / 2] * 6, abs=1e-5)
    assert col["timed"] == [1.0] * 6


def test_regular_beats_give_no_irregularity_and_an_irregular_record_does():
    regular = torch.tensor([[[0, 10], [10, 30], [30, 50], [50, 70], [70, 90], [90, 110], [110, 120]]])
    mask = torch.ones(1, 7, dtype=torch.bool)
    f, _ = beat_timing_features(regular, mask, SPT)
    assert f[0, :, 1:7].abs().max() == 0  # every ratio and irregularity 0
    bounds = [0, 10, 24, 50, 62, 90, 104, 130]  # interior durations 14, 26, 12, 28, 14
    irregular = torch.tensor([[[bounds[i], bounds[i + 1]] for i in range(7)]])
    g, _ = beat_timing_features(irregular, mask, SPT)
    assert (g[0, :, 4:7] > 1).all()


def test_masked_median():
    v = torch.tensor([[3.0, 1.0, 2.0, 9.0], [4.0, 8.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]).bool()
    assert masked_median(v, m).tolist() == [2.0, 6.0, 0.0]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 32])
def test_odd_shapes_no_beats_and_one_beat_are_finite(k):
    rng = rng_for("beat-timing-shapes", k)
    b = 4
    starts = torch.from_numpy(rng.integers(0, 300, (b, k)))
    spans = torch.stack([starts, starts + torch.from_numpy(rng.integers(0, 40, (b, k)))], -1)  # some empty
    n = torch.tensor([0, 1, min(2, k), k])
    mask = torch.arange(k)[None, :] < n[:, None]
    f, timed = beat_timing_features(spans, mask, SPT)
    assert f.shape == (b, k, len(FEATURES)) and torch.isfinite(f).all()
    assert not timed[:2].any() and not timed[2].any()  # no beat, one beat, two beats: no interior span
    assert (f[~timed] == 0).all()
    assert timed[3].all() == (k >= 3)
    emb = BeatTimingEmbedding(16, SPT)(spans, mask, 312)
    assert emb.shape == (b, 312, 16) and torch.isfinite(emb).all()
    assert (emb[:3] == 0).all()  # records without timing get nothing added


def test_spread_to_tokens_matches_a_loop():
    rng = rng_for("beat-timing-spread")
    vals = torch.from_numpy(rng.standard_normal((2, 4, 3))).float()
    spans = torch.tensor([[[0, 5], [5, 9], [9, 20], [20, 21]], [[3, 8], [8, 12], [0, 0], [0, 0]]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    out = spread_to_tokens(vals, spans, mask, 25)
    want = torch.zeros(2, 25, 3)
    for bi in range(2):
        for j in range(4):
            if mask[bi, j]:
                s, e = spans[bi, j].tolist()
                want[bi, s:e] = vals[bi, j]
    torch.testing.assert_close(out, want)


def test_gradient_reaches_the_timing_mlp_and_only_beat_tokens_change():
    torch.manual_seed(seed := 7)
    model = MELP(tiny_cfg(beat_timing=True).model)
    g = torch.Generator().manual_seed(seed)
    ecg = torch.rand(2, 12, 5000, generator=g)
    spans = torch.tensor([[[0, 20], [20, 45], [45, 62], [62, 90], [90, 100]], [[0, 312], [0, 0], [0, 0], [0, 0], [0, 0]]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()
    out = model.encode_ecg(ecg, spans, mask)
    (out["rhythm"].sum() + out["tokens"].square().mean()).backward()
    for p in model.ecg.timing.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the timing term lands on the tokens of the timed beats only (before the transformer: compare its input)
    add = model.ecg.timing(spans, mask, 312)
    assert (add[0, :100].abs().sum(-1) > 0).all() and (add[0, 100:] == 0).all() and (add[1] == 0).all()


def test_no_spans_is_a_record_without_beats():
    torch.manual_seed(2)
    model = MELP(tiny_cfg(beat_timing=True).model).eval()
    ecg = torch.rand(1, 12, 5000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        bare = model.ecg(ecg)
        none = model.ecg(ecg, torch.zeros(1, 1, 2, dtype=torch.long), torch.zeros(1, 1, dtype=torch.bool))
        some = model.ecg(ecg, torch.tensor([[[0, 20], [20, 45], [45, 62]]]), torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(bare, none)
    assert (bare - some).abs().max() > 1e-3


def test_padding_with_masked_slots_changes_nothing():
    torch.manual_seed(3)
    model = MELP(tiny_cfg(beat_timing=True).model).eval()
    ecg = torch.rand(1, 12, 5000, generator=torch.Generator().manual_seed(3))
    spans = torch.tensor([[[0, 20], [20, 45], [45, 62], [62, 90]]])
    padded = torch.cat([spans, torch.tensor([[[0, 0], [5, 50]]])], 1)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    with torch.no_grad():
        a = model.encode_ecg(ecg, spans, mask[:, :4])
        b = model.encode_ecg(ecg, padded, mask)
    torch.testing.assert_close(a["tokens"], b["tokens"])
    torch.testing.assert_close(a["rhythm"], b["rhythm"])


def test_presets_turn_it_on_and_a_config_without_the_key_leaves_it_off():
    from melp_fast.config import Config, get_preset

    for name in ("tiny", "paper"):
        assert get_preset(name).model.beat_timing and get_preset(name).model.beat_timing_samples
    d = get_preset("tiny").to_dict()
    del d["model"]["beat_timing"], d["model"]["beat_timing_samples"]
    assert Config.from_dict(d).model.beat_timing is False and Config.from_dict(d).model.beat_timing_samples is False


def test_a_model_saved_before_beat_timing_loads_and_behaves_as_before(tmp_path):
    from melp_fast.inference.export import export_model, load_model

    cfg = tiny_cfg(beat_timing=False)
    torch.manual_seed(5)
    model = MELP(cfg.model).eval()
    path = export_model(model, cfg, tmp_path / "old")
    d = json.loads((path / "config.json").read_text())
    del d["model"]["beat_timing"]  # as a model exported before the key existed
    (path / "config.json").write_text(json.dumps(d))
    loaded = load_model(path)
    assert loaded.cfg.beat_timing is False and loaded.ecg.timing is None
    ecg = torch.rand(1, 12, 5000, generator=torch.Generator().manual_seed(5))
    spans, mask = torch.tensor([[[0, 20], [20, 45], [45, 62]]]), torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_ecg(ecg, spans, mask)["rhythm"], model.encode_ecg(ecg, spans, mask)["rhythm"])


def test_durations_in_seconds_replace_the_token_spans():
    # the same six spans as the hand computation, with durations measured finer than a token: the features follow
    # the given durations, and durations equal to the token spans' give the token features exactly
    spans = torch.tensor([[[0, 10], [10, 30], [30, 49], [49, 70], [70, 90], [90, 100]]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    from_tokens, _ = beat_timing_features(spans, mask, SPT)
    same, _ = beat_timing_features(spans, mask, SPT, (spans[..., 1] - spans[..., 0]).float() * SPT)
    torch.testing.assert_close(same, from_tokens)
    secs = torch.tensor([[0.31, 0.640, 0.602, 0.671, 0.645, 0.33]])  # interior 0.640, 0.602, 0.671, 0.645 s
    f, timed = beat_timing_features(spans, mask, SPT, secs)
    col = {name: f[0, :, i].tolist() for i, name in enumerate(FEATURES)}
    d = [0.640, 0.640, 0.602, 0.671, 0.645, 0.645]  # the edges take their interior neighbour's duration
    assert timed.all()
    assert col["log_interval"] == pytest.approx([math.log(x) for x in d], abs=1e-6)
    steps = sorted(abs(math.log(b / a)) for a, b in [(0.640, 0.602), (0.602, 0.671), (0.671, 0.645)])
    assert col["irregularity"] == pytest.approx([10 * steps[1]] * 6, abs=1e-5)
    lag2 = [abs(math.log(0.671 / 0.640)), abs(math.log(0.645 / 0.602))]
    assert col["irregularity_lag2"] == pytest.approx([10 * sum(lag2) / 2] * 6, abs=1e-5)
    # masked slots holding 0 s stay finite and carry nothing
    f0, t0 = beat_timing_features(spans, torch.zeros(1, 6, dtype=torch.bool), SPT, torch.zeros(1, 6))
    assert torch.isfinite(f0).all() and not t0.any() and (f0 == 0).all()


@pytest.mark.parametrize("samples", [True, False])
def test_beat_seconds_are_read_only_with_beat_timing_samples(samples):
    torch.manual_seed(11)
    model = MELP(tiny_cfg(beat_timing=True, beat_timing_samples=samples).model).eval()
    ecg = torch.rand(1, 12, 5000, generator=torch.Generator().manual_seed(11))
    spans, mask = torch.tensor([[[0, 20], [20, 45], [45, 62], [62, 90], [90, 100]]]), torch.ones(1, 5, dtype=torch.bool)
    exact = (spans[..., 1] - spans[..., 0]).float() * SPT
    with torch.no_grad():
        no_seconds = model.encode_ecg(ecg, spans, mask)["tokens"]
        same = model.encode_ecg(ecg, spans, mask, exact)["tokens"]
        finer = model.encode_ecg(ecg, spans, mask, exact + torch.tensor([[0.0, 0.010, -0.012, 0.006, 0.0]]))["tokens"]
    torch.testing.assert_close(same, no_seconds)  # without beat_seconds: the token spans' durations
    if samples:
        assert (finer - same).abs().max() > 1e-4
    else:
        torch.testing.assert_close(finer, same)


def test_the_dataset_and_ecg_batch_give_the_durations_of_the_spans_in_samples(tmp_path):
    from melp_fast.data import synthetic
    from melp_fast.data.dataset import Collate, ECGTextDataset
    from melp_fast.data.store import build_synthetic_store
    from melp_fast.inference.generate import ecg_batch
    from melp_fast.train import pad_static

    seed = seed_for("beat-seconds-store")
    store = build_synthetic_store(tmp_path / "s", "train", 6, seed=seed, max_beats=32)
    ds = ECGTextDataset(store, stride=16)
    _, sample_spans, n_beats = store.read(np.arange(len(ds)))
    b = ds.batch(np.arange(len(ds)))
    secs, mask = b["beat_seconds"], b["beat_mask"]
    assert secs.dtype == torch.float32 and secs.shape == mask.shape and int(mask.sum()) == int(n_beats.sum()) > 0
    want = np.zeros(tuple(mask.shape), np.float32)
    for i in range(len(ds)):
        k = int(n_beats[i])
        want[i, :k] = (sample_spans[i, :k, 1] - sample_spans[i, :k, 0]) / 500.0
    torch.testing.assert_close(secs, torch.from_numpy(want))
    # Collate trims it with the beat slots, pad_static pads it with them
    model = MELP(tiny_cfg(beat_timing=True, beat_timing_samples=True).model).eval()
    c = Collate(model.tokenizer)(b)
    assert c["beat_seconds"].shape == c["beat_mask"].shape
    padded = pad_static(c, 40, c["input_ids"].shape[1], 0)
    assert padded["beat_seconds"].shape == (len(ds), 40) and (padded["beat_seconds"][:, c["beat_mask"].shape[1]:] == 0).all()
    # ecg_batch (generation, the real-ECG set) makes it from the same spans in samples
    one = ecg_batch(synthetic.generate_record(seed, 0).signal, model)
    n = len(one["spans"])
    assert n > 2
    torch.testing.assert_close(one["beat_seconds"][0, :n],
                               torch.from_numpy((one["spans"][:, 1] - one["spans"][:, 0]) / 500.0).float())
