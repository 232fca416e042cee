"""The real 12-lead ECG set (tests/data/real, melp_fast/eval/real_set.py) and the readers of its formats: GE MUSE XML
(muse_xml.py), Philips Sierra XML (philips_xml.py), CinC WFDB .mat and DICOM, each on a real file."""

import re

import numpy as np
import pytest

from helpers import FIXTURES
from melp_fast.data.constants import LEADS
from melp_fast.data.sources.common import SkipRecord, read_wfdb
from melp_fast.data.sources.single import read_any, read_record
from melp_fast.eval.real_set import check_report, load_set, stated_rates

REAL = FIXTURES / "real"


def test_the_set_has_ten_real_ecgs_from_three_sources_with_the_findings_asked_for():
    recs = load_set()
    assert len(recs) >= 10 and len({r["source"] for r in recs}) >= 3
    statements = " ".join(r["statement"] for r in recs)
    for finding in ("sinus rhythm", "atrial fibrillation", "bundle branch block", "st depression", "infarct"):
        assert finding in statements, finding
    readme = (FIXTURES / "README.md").read_text()
    for r in recs:
        stem = r["file"].split("/")[-1].split(":")[-1].rsplit(".", 1)[0]
        assert stem in readme, f"{r['file']} is not listed in tests/data/README.md"
        assert all(w in r["statement"] for w in r["expect"]), r["id"]  # what is expected is what the source says


@pytest.mark.parametrize("rec", load_set(), ids=lambda r: r["id"])
def test_every_record_reads_with_12_leads_present_or_named_missing(rec):
    x, meta = read_record(rec["path"], raw=True)
    assert x.shape == (12, 5000) and np.isfinite(x).all()
    derived, missing = set(meta.get("derived_leads", {})), set(meta["missing_leads"])
    stored = {lead for lead in LEADS if lead not in derived | missing}
    assert stored | derived | missing == set(LEADS) and not derived & missing
    for lead in stored | derived:
        assert np.ptp(x[LEADS.index(lead)]) > 0.05, f"{rec['id']}: lead {lead} is flat"
    for lead in missing:
        assert not np.any(x[LEADS.index(lead)])
    assert len(meta["beat_spans"]) >= 5


def test_muse_xml_reader_on_the_real_muse_export():
    """GE MUSE 9 export, stored I, II, V1-V6: the four limb leads derived; 97 bpm by the device."""
    from melp_fast.inference.grounding import measure_rr
    from melp_fast.data.beats import detect_r_peaks

    x, meta = read_any(REAL / "muse" / "guangxi_teaching_sinus_rhythm.xml")
    assert meta["format"] == "muse-xml" and meta["lead_names"] == ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    assert sorted(meta["derived_leads"]) == ["III", "aVF", "aVL", "aVR"] and meta["missing_leads"] == []
    assert meta["orig_fs"] == 500 and meta["padded"] == 0
    assert meta["report"].startswith("窦性心律")  # "sinus rhythm", the confirmed statement
    rr = measure_rr(detect_r_peaks(x, 500), 500)
    assert rr.n_beats == 16 and abs(rr.rate_bpm - 97) < 3 and rr.regular
    assert 0.5 < np.ptp(x[LEADS.index("II")]) < 5.0  # millivolts: 4.88 uV per bit applied


def test_muse_xml_reader_equals_the_wfdb_reader_on_the_same_recording():
    """CPSC A0001 stored both as CinC WFDB (.mat, 1 uV steps) and as MUSE-style XML (converted, with a baseline
    shift): the same samples within the XML's quantisation step."""
    from melp_fast.data.sources.muse_xml import read_muse_xml

    a, fs, names, _ = read_muse_xml(REAL / "cpsc2018" / "A0001.xml")
    b, fs2, names2, _ = read_wfdb(REAL / "cpsc2018" / "A0001")
    assert fs == fs2 == 500 and names == names2 and a.shape == b.shape == (12, 7500)
    assert np.abs(a - b).max() < 5e-5  # mV; the .mat's own step is 1e-3


def test_philips_xml_reader_on_the_real_sierra_file():
    x, meta = read_any(REAL / "philips" / "129DYPRG.xml")
    assert meta["format"] == "philips-xml" and meta["missing_leads"] == [] and "derived_leads" not in meta
    assert meta["orig_fs"] == 500 and meta["orig_samples"] == 5500
    assert meta["report"].startswith("sinus bradycardia. nonspecific intraventricular conduction delay. "
                                     "inferior infarct")
    i, ii, iii = (x[LEADS.index(n)] for n in ("I", "II", "III"))
    assert np.abs(iii - (ii - i)).max() < 0.02  # Einthoven holds on the decoded leads (5 uV steps, resampled)
    assert 0.3 < np.ptp(ii) < 5.0


def test_an_xml_that_is_no_ecg_is_one_line_naming_the_file(tmp_path):
    p = tmp_path / "notes.xml"
    p.write_text("<?xml version='1.0'?><notes><a>1</a></notes>")
    with pytest.raises(SkipRecord, match="notes.xml: an XML file that is neither"):
        read_any(p)
    q = tmp_path / "broken.xml"
    q.write_text("<RestingECG><Waveform>")
    with pytest.raises(SkipRecord, match="unreadable MUSE XML file broken.xml"):
        read_any(q)
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE RestingECG [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
                    "<RestingECG>&b;</RestingECG>")
    with pytest.raises(SkipRecord, match="bomb.xml"):
        read_any(bomb)


def test_check_report():
    normal = {"expect": ["sinus"], "forbid": ["infarct", "st elevation", "block", "atrial fibrillation"]}
    assert check_report("sinus rhythm. ventricular rate 97 bpm. normal ecg.", normal, 96.0) == []
    assert check_report("sinus rhythm. rate 76 bpm.", normal, 96.0) == ["rate 76 vs 96 measured"]
    assert check_report("atrial fibrillation. right bundle branch block.", normal, 96.0) == [
        "no 'sinus'", "says 'block'", "says 'atrial fibrillation'"]
    af = {"expect": ["atrial fibrillation"], "forbid": []}
    assert check_report("atrial fibrillation with rapid ventricular response. abnormal ecg.", af, 120.0) == []
    assert stated_rates("heart rate 80. atrial rate 300. 81 bpm") == [80, 81]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from helpers import export_tiny

    return export_tiny(tmp_path_factory.mktemp("rs") / "model", seed=1)


def test_score_set_grounds_every_rate_and_builds_the_table(exported, tmp_path, capsys):
    """An untrained model's reports (as the demo prints them): whatever they say, no grounded report states a rate
    more than 5 bpm off."""
    import torch

    from melp_fast.eval import real_set as realset
    from melp_fast.inference.export import load_model

    torch.set_num_threads(1)
    model = load_model(exported)
    rows = realset.demo_report(model, tmp_path, beam_width=1, max_len=12)
    printed = capsys.readouterr().out
    assert "The real 12-lead ECG set (13 recordings the model never saw, 4 sources" in printed
    assert realset.summary(rows) in printed
    assert (tmp_path / "real_set.md").read_text().count("\n| ") == len(rows) + 1  # and the header
    assert [r["id"] for r in rows] == [r["id"] for r in load_set()]
    for r in rows:
        assert not any(p.startswith("rate ") for p in r["problems"]), r
        assert r["ok"] == (r["problems"] == []) and r["rate_bpm"] > 30
    muse = next(r for r in rows if r["id"] == "muse-guangxi")
    assert muse["derived_leads"] == ["III", "aVF", "aVL", "aVR"] and muse["n_beats"] == 16
    text = realset.table(rows)
    assert text.count("\n| ") == len(rows) and f"/{len(rows)} real ECGs" in text and "4 sources" in text


def test_generate_cli_grounds_prints_raw_and_names_derived_leads(exported, tmp_path, capsys, monkeypatch):
    from melp_fast.inference import generate

    monkeypatch.setattr(generate, "generate_report", lambda *a, **k: "atrial fibrillation. ventricular rate 76 bpm.")
    out = tmp_path / "g"
    assert generate.main(["--ckpt", str(exported), "--ecg", str(REAL / "muse" / "guangxi_teaching_sinus_rhythm.xml"),
                          "--beam-width", "2", "--raw", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "derived: III, aVR, aVL, aVF" in printed
    assert "generated (greedy):          atrial fibrillation. ventricular rate 97 bpm." in printed
    assert "raw model text:            atrial fibrillation. ventricular rate 76 bpm." in printed
    assert "grounded: rate 76 -> 97 bpm" in printed
    assert "FLAG (contradicted by the RR intervals): 'atrial fibrillation' stated" in printed
    import json

    saved = json.loads((out / "report.json").read_text())
    assert saved["beam"] == "atrial fibrillation. ventricular rate 97 bpm."
    assert saved["beam_grounded"]["raw"].endswith("76 bpm.") and saved["beam_grounded"]["flags"]


def test_wfdb_dir_source_walks_the_xml_ecgs_and_keeps_the_derived_leads():
    from melp_fast.data.sources import wfdb_dir

    items = {it.record_id: it for it in wfdb_dir.list_items(REAL)}
    assert sorted(items) == sorted([f"A{k:04d}" for k in range(1, 11)] + ["guangxi_teaching_sinus_rhythm", "129DYPRG"])
    assert items["A0001"].path == "cpsc2018/A0001"  # the WFDB record, not its XML copy
    x, keep = wfdb_dir.load(REAL, items["guangxi_teaching_sinus_rhythm"])
    assert x.shape == (12, 5000) and sorted(keep["derived_leads"]) == ["III", "aVF", "aVL", "aVR"]
    assert keep["report"].startswith("窦性心律")


def test_a_missing_set_is_one_line_naming_the_folder(tmp_path, capsys):
    from benchmarks import real_ecg

    gone = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"not in {re.escape(str(gone))} \\(no folder\\)"):
        load_set(gone)
    with pytest.raises(FileNotFoundError, match="no records.json in it"):
        load_set(tmp_path)
    # the benchmark says it in one line before it loads any model (this one does not exist either)
    assert real_ecg.main(["--set-dir", str(gone), "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(gone) in err and "tests/data/real" in err, err


def test_benchmark_summary_rows_and_spread(tmp_path):
    """The several-model summary of benchmarks/real_ecg.py: counts from the rows, zero-shot from <run>/zero_shot.json."""
    import json

    from benchmarks import real_ecg

    def row(ok, report, flags=(), expect=(), err=None):
        return {"ok": ok, "report": report, "flags": list(flags), "expect": list(expect), "raw_rate_error": err}

    pvc_flag = "premature complexes stated, but no premature beat among the 11 detected"
    a = [row(True, "atrial fibrillation.", expect=["atrial fibrillation"]),
         row(False, "sinus tachycardia.", ["a sinus rhythm stated, but the RR intervals are irregular"],
             ["atrial fibrillation"], 7.0),
         row(True, "sinus rhythm. pvcs.", [pvc_flag], ["sinus"], 2.0)]
    m = real_ecg.set_summary(a)
    assert m == {"ok": 2, "n": 3, "af": 1, "n_af": 2, "pvc_no_premature": 1, "far_rate": 1, "flagged": 2}
    run = tmp_path / "s1"
    (run / "model").mkdir(parents=True)
    (run / "zero_shot.json").write_text(json.dumps({"per_class": {"SR": 0.9, "AF": 0.72, "PVC": float("nan")},
                                                    "mean": 0.81}))
    assert real_ecg.zero_shot_of(str(run / "model"))["mean"] == 0.81
    assert real_ecg.zero_shot_of(str(tmp_path / "none" / "model")) is None
    b = dict(m, ok=3)
    text = real_ecg.summary_table(["seed 0", "seed 1"], [m, b], [None, real_ecg.zero_shot_of(str(run / "model"))])
    assert "| seed 0 | 2/3 (67 %) | 1/2 | 1 | 1 | 2 | - | - |" in text
    assert "| seed 1 | 3/3 (100 %) | 1/2 | 1 | 1 | 2 | 0.810 | 0.720 (AF) |" in text
    assert "2-3 of 3 (mean 2.5, spread 1); at least 80 % on 1 of 2." in text
