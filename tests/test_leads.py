"""Lead completion (melp_fast/data/leads.py): the limb leads a record leaves out, derived from those it stores."""

import numpy as np
import pytest

from helpers import DCM, rng_for
from melp_fast.data.constants import LEADS
from melp_fast.data.leads import absent_leads, complete_leads
from melp_fast.data.sources.common import canonical_lead, to_canonical
from melp_fast.data.sources.single import read_dicom

LIMB_DERIVED = {"8-lead (I, II, V1-V6)": ["III", "aVR", "aVL", "aVF"],
                "9-lead (I, II, III, V1-V6)": ["aVR", "aVL", "aVF"]}


def _pydicom_ecg():
    """pydicom's ECG as stored (1000 Hz, mV), in canonical order, and its quantisation step in mV."""
    import pydicom

    sig, fs, names, _ = read_dicom(DCM)
    x = np.zeros((12, sig.shape[1]))
    for row, name in zip(sig, names):
        x[LEADS.index(canonical_lead(name))] = row
    ch = pydicom.dcmread(str(DCM)).WaveformSequence[0].ChannelDefinitionSequence
    steps = {float(c.ChannelSensitivity) * float(c.get("ChannelSensitivityCorrectionFactor", 1)) for c in ch}
    assert len(steps) == 1, steps
    return x, fs, names, steps.pop() * 1e-3  # uV -> mV


@pytest.mark.parametrize("stored", list(LIMB_DERIVED))
def test_derived_limb_leads_equal_the_recorded_ones_within_one_quantisation_step(stored):
    x, _, _, q = _pydicom_ecg()
    drop = LIMB_DERIVED[stored]
    y = x.copy()
    y[[LEADS.index(d) for d in drop]] = 0.0
    still, derived = complete_leads(y)
    assert still == [] and sorted(derived) == sorted(drop)
    for lead in drop:
        k = LEADS.index(lead)
        err = np.abs(y[k] - x[k]).max()
        assert err <= q, f"{lead} derived from the stored leads differs from the recorded one by {err} mV > {q} mV"
        assert np.abs(x[k]).max() > 50 * q  # a real lead, not a flat one
    kept = [k for k in range(12) if LEADS[k] not in drop]
    assert np.array_equal(y[kept], x[kept])  # stored leads untouched


@pytest.mark.parametrize("stored", list(LIMB_DERIVED))
def test_a_record_stored_8_or_9_lead_reads_as_the_12_lead_one(stored):
    """Through the readers' common path (to_canonical: mapping, 1000 -> 500 Hz): the derived leads are recorded in
    the record's info and the signal matches the record read with all 12 leads."""
    x, fs, names, q = _pydicom_ecg()
    full, m_full = to_canonical(x, fs, LEADS)
    drop = LIMB_DERIVED[stored]
    keep = [k for k in range(12) if LEADS[k] not in drop]
    part, m = to_canonical(x[keep], fs, [names[k] for k in keep])
    assert m["missing_leads"] == [] and sorted(m["derived_leads"]) == sorted(drop)
    assert "derived_leads" not in m_full
    # the resampling filter is linear: the difference is the resampled quantisation error (<= q / 2 per sample)
    assert np.abs(part - full).max() <= q


def test_a_missing_precordial_lead_stays_masked_and_named():
    x, fs, names, _ = _pydicom_ecg()
    keep = [k for k in range(12) if LEADS[k] not in ("aVR", "aVL", "aVF", "V3")]
    out, m = to_canonical(x[keep], fs, [names[k] for k in keep])
    assert m["missing_leads"] == ["V3"] and sorted(m["derived_leads"]) == ["aVF", "aVL", "aVR"]
    assert not np.any(out[LEADS.index("V3")])


def test_formulas_and_which_pairs_suffice():
    rng = rng_for("leads", "formulas")
    i, ii = rng.normal(size=(2, 300))
    truth = np.zeros((12, 300))
    truth[:6] = [i, ii, ii - i, -(i + ii) / 2, i - ii / 2, ii - i / 2]
    truth[6:] = rng.normal(size=(6, 300))
    for stored in (["I", "II"], ["I", "III"], ["II", "III"]):
        y = truth.copy()
        gone = [lead for lead in LEADS[:6] if lead not in stored]
        y[[LEADS.index(g) for g in gone]] = 0.0
        still, derived = complete_leads(y)
        assert still == [] and sorted(derived) == sorted(gone), stored
        np.testing.assert_allclose(y, truth, atol=1e-12, err_msg=str(stored))
    # one limb lead (a Holter's MLII) gives no other: nothing derived, all named as missing
    y = truth.copy()
    y[[0, 2, 3, 4, 5]] = 0.0
    still, derived = complete_leads(y)
    assert derived == {} and still == ["I", "III", "aVR", "aVL", "aVF"]
    assert absent_leads(y) == still


def test_generate_completes_a_zero_filled_signal():
    """generate's ecg_batch: a canonical signal with aVR, aVL, aVF zero-filled reaches the model completed."""
    import torch

    from helpers import tiny_cfg
    from melp_fast.inference.generate import ecg_batch
    from melp_fast.model.melp import MELP

    x, fs, names, q = _pydicom_ecg()
    full, _ = to_canonical(x, fs, LEADS)
    part = full.copy()
    part[[3, 4, 5]] = 0.0
    torch.manual_seed(0)
    model = MELP(tiny_cfg().model)
    a, b = ecg_batch(full, model), ecg_batch(part, model)
    assert b["derived_leads"] == {"aVR": "-(I + II) / 2", "aVL": "I - II / 2", "aVF": "II - I / 2"}
    assert np.abs(b["raw"] - full).max() <= q and np.array_equal(a["raw"], full)
    assert torch.allclose(a["ecg"], b["ecg"], atol=1e-3)  # min-max of a ~2 mV range: q / 2 is ~3e-4
    assert np.any(part[3]) is np.False_  # the caller's array is not changed
