"""Dataset readers on miniature trees in the published layouts, made from the real recordings of tests/data
(MIT-BIH 100, 5 min) and pydicom's 12-lead DICOM ECG, with corrupt members; tasks and splits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from melp_fast.data import tasks as tasklib
from melp_fast.data.sources import LEADS, SkipRecord, UnsafePath, get_source, read_record, safe_path
from melp_fast.data.sources.common import canonical_lead, resample
from melp_fast.data.sources.single import read_any, read_dicom

from helpers import DCM, MIT  # noqa: E402  (pydicom's test ECG; MIT-BIH 100, 5 min, tests/data)

MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]

pytestmark = pytest.mark.usefixtures("recordings")


# ------------------------------------------------------------------------------------------------ real signals
def dicom_12lead_500() -> np.ndarray:
    """The real 12-lead DICOM ECG in mV, PTB-XL order, resampled 1000 -> 500 Hz: [12, 5000]."""
    sig, fs, names, _ = read_dicom(DCM)
    order = [[canonical_lead(n) for n in names].index(lead) for lead in LEADS]
    return resample(sig[order], fs, 500)[:, :5000]


def mitbih(start_s: float, seconds: float = 10.0) -> np.ndarray:
    """MIT-BIH 100 (MLII, V5 at 360 Hz) in mV: [2, seconds * 360]."""
    import wfdb

    a = int(start_s * 360)
    r = wfdb.rdrecord(str(MIT), sampfrom=a, sampto=a + int(seconds * 360))
    return r.p_signal.T.astype(np.float64)


def write_wfdb(d: Path, name: str, sig: np.ndarray, fs: float, names, comments=None, fmt="16"):
    import wfdb

    d.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(names), sig_name=list(names), p_signal=np.asarray(sig).T,
                fmt=[fmt] * len(names), comments=list(comments or []), write_dir=str(d))


def write_cinc(d: Path, name: str, sig: np.ndarray, fs: float, names, dx: str, gain: float = 1000.0):
    """A PhysioNet/CinC 2020-2021 record: NAME.mat (int16 'val', digital) + NAME.hea with '#Dx:'."""
    from scipy.io import savemat

    d.mkdir(parents=True, exist_ok=True)
    val = np.round(np.asarray(sig) * gain).astype(np.int16)
    savemat(str(d / f"{name}.mat"), {"val": val})
    lines = [f"{name} {len(names)} {int(fs)} {val.shape[1]}"]
    for i, n in enumerate(names):
        lines.append(f"{name}.mat 16+24 {gain:g}/mV 16 0 {int(val[i, 0])} 0 0 {n}")
    lines += ["#Age: 61", "#Sex: Female", f"#Dx: {dx}", "#Rx: Unknown", "#Hx: Unknown", "#Sx: Unknown"]
    (d / f"{name}.hea").write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------ MIMIC-IV-ECG
MIMIC_REPORTS = {
    "40000001": ["Sinus rhythm", "Normal ECG", "", None],
    "40000002": ["Sinus rhythm with 1st degree A-V block", "Left axis deviation", "Abnormal EKG ***"],
    "40000003": ["Sinus rhythm", "Nonspecific T wave changes", "Borderline ECG"],  # NaN samples
    "40000004": ["", "", ""],  # empty report
    "40000005": ["Sinus rhythm", "Possible left atrial abnormalit\udce9 here", "Borderline ECG"],  # non-UTF-8 byte
    "40000006": ["Sinus rhythm", "Normal ECG", "truncated data"],  # truncated .dat
    "40000007": ["Sinus rhythm", "Normal ECG", "header lies"],  # header claims more samples
    "40000008": ["Sinus rhythm", "Normal ECG", "missing header"],  # no .hea
    "40000009": ["Sinus rhythm", "Normal ECG", "escaping path"],  # path with ..
    "40000010": ["Sinus rhythm", "Normal ECG", "absolute path"],  # absolute path
    "40000011": ["Sinus rhythm", "Normal ECG", "link out of the tree"],  # symlink to outside
    "40000012": ["Normal ECG"],  # under 4 words
    "40000013": ["Sinus rhythm", "Normal ECG", "all zero signal"],  # all zeros
}


def make_mimic_tree(tmp: Path) -> Path:
    root = tmp / "mimic-iv-ecg"
    ecg = dicom_12lead_500()
    mimic_sig = ecg[[LEADS.index(n) for n in MIMIC_ORDER]]  # stored in MIMIC's order, names say so
    rows, mm = [], []
    outside = tmp / "outside"
    for k, study in enumerate(MIMIC_REPORTS):
        subject = f"1000{k // 3:04d}"
        rel = f"files/p1000/p{subject}/s{study}/{study}"
        d = root / Path(rel).parent
        sig = np.roll(mimic_sig, 250 * k, axis=1) * (1 + 0.1 * k)
        if study == "40000003":
            sig = sig.copy()
            sig[4, 1000:1010] = np.nan
        if study == "40000013":
            sig = np.zeros_like(sig)
        if study == "40000009":
            write_wfdb(outside, study, sig, 500, MIMIC_ORDER)
            rel = f"files/../../outside/{study}"
        elif study == "40000010":
            write_wfdb(outside, study, sig, 500, MIMIC_ORDER)
            rel = str(outside / study)
        elif study == "40000011":
            write_wfdb(outside / "linked", study, sig, 500, MIMIC_ORDER)
            d.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(outside / "linked", d)
        else:
            write_wfdb(d, study, sig, 500, MIMIC_ORDER)
        if study == "40000006":
            f = d / f"{study}.dat"
            f.write_bytes(f.read_bytes()[:50_000])
        if study == "40000007":
            h = d / f"{study}.hea"
            first, *rest = h.read_text().splitlines()
            parts = first.split()
            parts[3] = "6000"
            h.write_text("\n".join([" ".join(parts), *rest]) + "\n")
        if study == "40000008":
            (d / f"{study}.hea").unlink()
        rows.append(f"{subject},{study},{study},2180-07-29 15:{k:02d}:00,{rel}")
        rep = MIMIC_REPORTS[study] + [""] * (18 - len(MIMIC_REPORTS[study]))
        mm.append([subject, study, "6848296", f"2180-07-29 15:{k:02d}:00", *["" if r is None else r for r in rep],
                   "0.005-150", "60", "659"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "record_list.csv").write_text("subject_id,study_id,file_name,ecg_time,path\n" + "\n".join(rows) + "\n")
    head = ["subject_id", "study_id", "cart_id", "ecg_time", *[f"report_{i}" for i in range(18)], "bandwidth",
            "filtering", "rr_interval"]
    text = ",".join(head) + "\n" + "\n".join(",".join(f'"{v}"' if v else "" for v in r) for r in mm) + "\n"
    # the \udce9 placeholder becomes a raw Latin-1 byte 0xE9: not valid UTF-8
    (root / "machine_measurements.csv").write_bytes(text.encode("utf-8", "surrogateescape"))
    return root


def load_all(src, root, nan_policy="drop"):
    kept, skipped = {}, {}
    for it in src.list_items(root):
        if "skip" in it.extra:
            skipped[it.record_id] = it.extra["skip"]
            continue
        try:
            kept[it.record_id] = (it, *src.load(root, it, nan_policy))
        except SkipRecord as e:
            skipped[it.record_id] = str(e)
    return kept, skipped


def test_mimic_reader_reports_leads_and_corrupt_members(tmp_path):
    root = make_mimic_tree(tmp_path)
    src = get_source("mimic-iv-ecg")
    kept, skipped = load_all(src, root)
    assert sorted(kept) == ["40000001", "40000002", "40000005"]
    assert "empty report" in skipped["40000004"]
    assert "NaN" in skipped["40000003"]
    assert "truncated" in skipped["40000006"]
    assert "lies about its length" in skipped["40000007"]
    assert "header" in skipped["40000008"] and "missing" in skipped["40000008"]
    assert "'..'" in skipped["40000009"]
    assert "absolute" in skipped["40000010"]
    assert "leaves the root" in skipped["40000011"]
    assert "under 4 words" in skipped["40000012"]
    assert "zero" in skipped["40000013"]
    # report cleaning (EKG -> ECG, *** dropped, lower case, '. ' joined, final '.'), Latin-1 fallback
    assert kept["40000002"][0].report == ("sinus rhythm with 1st degree a-v block. left axis deviation. "
                                          "abnormal ecg.")
    assert "abnormalit\u00e9 here" in kept["40000005"][0].report
    # MIMIC's aVF/aVL swap undone by name: the canonical signal is the DICOM ECG in PTB-XL order
    x, meta = kept["40000001"][1], kept["40000001"][2]
    ref = dicom_12lead_500()
    assert x.shape == (12, 5000) and x.dtype == np.float32 and meta["missing_leads"] == []
    np.testing.assert_allclose(x, ref, atol=2e-3)
    assert not np.allclose(x[LEADS.index("aVL")], ref[LEADS.index("aVF")], atol=2e-3)
    # NaN repair rule: linear interpolation inside the lead, counted
    it = next(i for i in src.list_items(root) if i.record_id == "40000003")
    x3, m3 = src.load(root, it, "repair")
    assert np.isfinite(x3).all() and m3["repaired_samples"] == 10


def test_missing_csv_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="record_list.csv"):
        get_source("mimic-iv-ecg").list_items(tmp_path)


def test_safe_path_refuses_escapes(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "out", tmp_path / "in" / "link")
    assert safe_path(tmp_path / "in", "a/b") == (tmp_path / "in" / "a" / "b").resolve()
    for bad in ["../out/x", "a/../../out", "/etc/passwd", "link/x", ""]:
        with pytest.raises(UnsafePath):
            safe_path(tmp_path / "in", bad)


# ------------------------------------------------------------------------------------------------ PTB-XL
SCP = [  # code, diagnostic, form, rhythm, diagnostic_class, diagnostic_subclass
    ("NORM", 1, "", "", "NORM", "NORM"), ("IMI", 1, "", "", "MI", "IMI"), ("ILMI", 1, "", "", "MI", "IMI"),
    ("ASMI", 1, "", "", "MI", "AMI"), ("LMI", 1, "", "", "MI", "LMI"), ("PMI", 1, "", "", "MI", "PMI"),
    ("NDT", 1, 1, "", "STTC", "STTC"), ("NST_", 1, 1, "", "STTC", "NST_"), ("ISCAL", 1, "", "", "STTC", "ISCA"),
    ("ISCIN", 1, "", "", "STTC", "ISCI"), ("ISC_", 1, "", "", "STTC", "ISC_"),
    ("LAFB", 1, "", "", "CD", "LAFB/LPFB"), ("IRBBB", 1, "", "", "CD", "IRBBB"), ("ILBBB", 1, "", "", "CD", "ILBBB"),
    ("CLBBB", 1, "", "", "CD", "CLBBB"), ("CRBBB", 1, "", "", "CD", "CRBBB"), ("1AVB", 1, "", "", "CD", "_AVB"),
    ("IVCD", 1, "", "", "CD", "IVCD"), ("WPW", 1, "", "", "CD", "WPW"), ("LVH", 1, "", "", "HYP", "LVH"),
    ("RVH", 1, "", "", "HYP", "RVH"), ("LAO/LAE", 1, "", "", "HYP", "LAO/LAE"), ("RAO/RAE", 1, "", "", "HYP", "RAO/RAE"),
    ("SEHYP", 1, "", "", "HYP", "SEHYP"),
    *[(c, "", 1, "", "", "") for c in ["DIG", "LNGQT", "ABQRS", "PVC", "STD_", "VCLVH", "QWAVE", "LOWT", "NT_", "PAC",
                                       "LPR", "INVT", "LVOLT", "HVOLT", "TAB_", "STE_", "PRC(S)"]],
    *[(c, "", "", 1, "", "") for c in ["SR", "AFIB", "STACH", "SARRH", "SBRAD", "PACE", "SVARR", "BIGU", "AFLT",
                                       "SVTAC", "PSVT", "TRIGU"]],
]


def make_ptbxl_tree(tmp: Path) -> Path:
    root = tmp / "ptb-xl"
    root.mkdir(parents=True)
    # scp_statements.csv: columns deliberately not in the published order (read by name)
    lines = ["," + ",".join(["diagnostic_subclass", "description", "rhythm", "form", "diagnostic", "diagnostic_class",
                             "Statement Category"])]
    for code, dg, fm, rh, cls, sub in SCP:
        lines.append(f"{code},{sub},desc of {code},{rh},{fm},{dg},{cls},cat")
    (root / "scp_statements.csv").write_text("\n".join(lines) + "\n")
    ecg = dicom_12lead_500()
    recs = [  # ecg_id, scp_codes, report, fold, how
        (1, "{'NORM': 100.0, 'SR': 0.0}", "sinusrhythmus normales ekg", 3, "dicom"),
        (2, "{'IMI': 80.0, 'LVOLT': 0.0, 'AFIB': 0.0}", "vorhofflimmern", 9, "mitbih"),
        (3, "{'CLBBB': 100.0, 'SR': 0.0, 'PVC': 100.0}", "", 10, "dicom"),
        (4, "{'NORM': 100.0}", "escaping path", 1, "escape"),
        (5, "{'NORM': 100.0}", "missing header", 2, "nohea"),
    ]
    rows = []
    for ecg_id, scp, rep, fold, how in recs:
        hr = f"records500/00000/{ecg_id:05d}_hr"
        d = root / "records500" / "00000"
        if how == "dicom":
            write_wfdb(d, f"{ecg_id:05d}_hr", np.roll(ecg, 300 * ecg_id, axis=1), 500, LEADS)
        elif how == "mitbih":  # 2 leads at 360 Hz: resampled, 10 leads zero-filled
            write_wfdb(d, f"{ecg_id:05d}_hr", mitbih(60.0), 360, ["MLII", "V5"])
        elif how == "escape":
            write_wfdb(tmp / "elsewhere", "x", ecg, 500, LEADS)
            hr = "records500/../../elsewhere/x"
        elif how == "nohea":
            write_wfdb(d, f"{ecg_id:05d}_hr", ecg, 500, LEADS)
            (d / f"{ecg_id:05d}_hr.hea").unlink()
        rows.append([str(ecg_id), "15709.0", "56.0", "1", f'"{scp}"', f'"{rep}"', str(fold),
                     f"records100/00000/{ecg_id:05d}_lr", hr])
    head = "ecg_id,patient_id,age,sex,scp_codes,report,strat_fold,filename_lr,filename_hr"
    (root / "ptbxl_database.csv").write_text(head + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    return root


def test_ptbxl_reader_tasks_by_name(tmp_path):
    root = make_ptbxl_tree(tmp_path)
    src = get_source("ptbxl")
    t = src.tasks(root)
    assert {k: len(v["classes"]) for k, v in t.items()} == {"ptbxl-super": 5, "ptbxl-sub": 23, "ptbxl-form": 19,
                                                             "ptbxl-rhythm": 12}
    assert t["ptbxl-super"]["classes"] == ["CD", "HYP", "MI", "NORM", "STTC"]
    kept, skipped = load_all(src, root)
    assert sorted(kept) == ["1", "2", "3"]
    assert "'..'" in skipped["4"] and "missing" in skipped["5"]
    it2, x2, m2 = kept["2"]
    assert m2["orig_fs"] == 360 and set(m2["missing_leads"]) == set(LEADS) - {"II", "V5"}
    assert np.all(x2[LEADS.index("I")] == 0) and np.any(x2[LEADS.index("II")] != 0)
    codes = [kept[k][0].codes for k in ("1", "2", "3")]
    sup = tasklib.labels_for(t["ptbxl-super"], codes)
    np.testing.assert_array_equal(sup, [[0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0]])
    rhy = tasklib.labels_for(t["ptbxl-rhythm"], codes)
    assert rhy[:, t["ptbxl-rhythm"]["classes"].index("AFIB")].tolist() == [0, 1, 0]
    form = tasklib.labels_for(t["ptbxl-form"], codes)
    assert form[2, t["ptbxl-form"]["classes"].index("PVC")] == 1 and form[1, t["ptbxl-form"]["classes"].index("LVOLT")] == 1
    sub = tasklib.labels_for(t["ptbxl-sub"], codes)
    assert sub[1, t["ptbxl-sub"]["classes"].index("IMI")] == 1 and sub.sum() == 3
    assert kept["1"][0].report == "sinusrhythmus normales ekg." and kept["1"][0].extra["strat_fold"] == 3


# ------------------------------------------------------------------------------------------------ CinC layouts
def make_cinc_tree(tmp: Path, prefix: str, dxs: list[str]) -> Path:
    root = tmp / prefix
    ecg = dicom_12lead_500()
    for k, dx in enumerate(dxs):
        name = f"{prefix}{k + 1:04d}"
        d = root / "g1"
        write_cinc(d, name, np.roll(ecg, 400 * k, axis=1), 500, LEADS, dx)
    n = len(dxs)
    # corrupt members: a header that lies about its length, a truncated .mat, a .mat without its .hea
    write_cinc(root / "g1", f"{prefix}{n + 1:04d}", ecg, 500, LEADS, "426783006")
    h = root / "g1" / f"{prefix}{n + 1:04d}.hea"
    first, *rest = h.read_text().splitlines()
    h.write_text("\n".join([first.replace(" 5000", " 7500"), *rest]) + "\n")
    write_cinc(root / "g1", f"{prefix}{n + 2:04d}", ecg, 500, LEADS, "426783006")
    m = root / "g1" / f"{prefix}{n + 2:04d}.mat"
    m.write_bytes(m.read_bytes()[:3000])
    write_cinc(root / "g2", f"{prefix}{n + 3:04d}", ecg, 500, LEADS, "426783006")
    (root / "g2" / f"{prefix}{n + 3:04d}.hea").unlink()
    return root


def test_cpsc2018_and_csn_cinc_layout(tmp_path):
    root = make_cinc_tree(tmp_path, "A", ["426783006", "59118001,164884008", "164889003", "270492004,284470004"])
    src = get_source("cpsc2018")
    kept, skipped = load_all(src, root)
    assert sorted(kept) == ["A0001", "A0002", "A0003", "A0004"]
    assert "7500" in skipped["A0005"] and "lies about its length" in skipped["A0005"]
    assert "unreadable MATLAB" in skipped["A0006"]
    assert "header missing" in skipped["A0007"]
    x1 = kept["A0001"][1]
    np.testing.assert_allclose(x1, dicom_12lead_500(), atol=1e-3)  # gain 1000/mV
    task = src.tasks(root)["cpsc2018"]
    assert task["classes"] == ["NORM", "AF", "IAVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE"]
    lab = tasklib.labels_for(task, [kept[k][2]["codes"] for k in sorted(kept)])
    want = np.zeros((4, 9))
    want[0, 0] = want[1, 4] = want[1, 6] = want[2, 1] = want[3, 2] = want[3, 5] = 1
    np.testing.assert_array_equal(lab, want)

    root = make_cinc_tree(tmp_path, "JS", ["426177001", "164890007", "427084000,164889003", "426783006,427393009"])
    src = get_source("csn")
    kept, _ = load_all(src, root)
    t = src.tasks(root)["csn-rhythm4"]
    lab = tasklib.labels_for(t, [kept[k][2]["codes"] for k in sorted(kept)])
    assert t["classes"] == ["SB", "SR", "AFIB", "GSVT"]
    np.testing.assert_array_equal(lab, [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0]])


# ------------------------------------------------------------------------------------------------ single records
def test_read_record_wfdb_and_dicom(tmp_path):
    x, meta = read_record(DCM)
    assert x.shape == (12, 5000) and x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
    assert meta["report"] == "ritmo sinusale. ecg normale." and meta["orig_fs"] == 1000
    # the DICOM file's own R-point fiducials (1-based, 1000 Hz; the first one belongs to the median beat)
    import pydicom

    ds = pydicom.dcmread(str(DCM))
    fid = [int(np.atleast_1d(a.ReferencedSamplePositions)[0]) for a in ds.WaveformAnnotationSequence
           if "ReferencedSamplePositions" in a and "ConceptNameCodeSequence" in a
           and str(a.ConceptNameCodeSequence[0].CodeMeaning) == "Fiducial Point"][1:]
    refs = [(v - 1) // 2 for v in fid]
    spans = np.array(meta["beat_spans"])
    assert len(refs) == 10 and len(spans) == 10
    assert all(((spans[:, 0] <= r) & (r < spans[:, 1])).sum() == 1 for r in refs)  # one beat per reference R
    raw, _ = read_record(MIT.with_suffix(".hea"), raw=True)
    assert raw.shape == (12, 5000)
    np.testing.assert_allclose(raw[LEADS.index("II"), :3000], resample(mitbih(0.0), 360, 500)[0, :3000], atol=1e-3)
    with pytest.raises(ValueError, match="nope.hea"):
        read_record(tmp_path / "nope.hea")
    with pytest.raises(ValueError, match="unknown record type"):
        read_any(tmp_path / "x.txt")


# ------------------------------------------------------------------------------------------------ splits
def test_splits_and_reference_csv(tmp_path):
    rng = np.random.default_rng(0)
    labels = (rng.random((1000, 5)) < [0.5, 0.2, 0.1, 0.05, 0.01]).astype(np.float32)
    parts = tasklib.stratified_split(labels, (0.8, 0.1, 0.1), seed=42)
    allidx = np.concatenate(parts)
    assert len(allidx) == 1000 and len(np.unique(allidx)) == 1000
    assert abs(len(parts[0]) - 800) <= 6
    again = tasklib.stratified_split(labels, (0.8, 0.1, 0.1), seed=42)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    for frac, lo, hi in [(0.01, 8, 20), (0.1, 75, 90), (1.0, len(parts[0]), len(parts[0]))]:
        sub = tasklib.train_subset(parts[0], labels, frac, seed=0)
        assert lo <= len(sub) <= hi and np.isin(sub, parts[0]).all()
        present = labels[parts[0]].sum(0) > 0
        assert (labels[sub].sum(0)[present] > 0).all()  # every class stays present
    tr, va = tasklib.subject_split([f"s{i // 3}" for i in range(300)], 0.02, 42)
    assert not set(np.array([f"s{i // 3}" for i in range(300)])[tr]) & set(np.array([f"s{i // 3}" for i in range(300)])[va])
    f = tasklib.ptbxl_fold_split([1, 9, 10, 8, 3])
    assert [x.tolist() for x in f] == [[0, 3, 4], [1], [2]]
    # reference split CSV with label columns in another order: read by name
    csv = tmp_path / "ptbxl_sub_class_train.csv"
    csv.write_text("ecg_id,filename_hr,STTC,NORM,MI\n7,records500/00000/00007_hr,1,0,0\n9,records500/00000/00009_hr,0,0,1\n")
    ids, lab, classes = tasklib.read_split_csv(csv, classes=["MI", "NORM", "STTC"])
    assert ids == ["7", "9"] and classes == ["MI", "NORM", "STTC"]
    np.testing.assert_array_equal(lab, [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match="HYP"):
        tasklib.read_split_csv(csv, classes=["HYP"])
    ids, lab, classes = tasklib.read_split_csv(csv)
    assert classes == ["STTC", "NORM", "MI"] and lab.shape == (2, 3)


def test_ptbxl_csv_json_safe(tmp_path):
    """Items of every source serialise (they travel to worker processes and into the build plan)."""
    import dataclasses

    root = make_ptbxl_tree(tmp_path)
    items = get_source("ptbxl").list_items(root)
    json.dumps([dataclasses.asdict(i) for i in items])


@pytest.mark.parametrize("fmt", ["16", "212", "80", "24", "32"])
def test_native_wfdb_reader_matches_wfdb(tmp_path, fmt):
    from melp_fast.data.sources.common import _read_wfdb_lib, read_wfdb

    x = mitbih(100.0, 2.0)[[0, 1, 0]] * [[1.0], [1.0], [-0.5]]
    x[1, 10:13] = np.nan  # invalid samples
    write_wfdb(tmp_path, f"r{fmt}", x, 360, ["MLII", "V5", "aVR"], comments=["Dx: 1"], fmt=fmt)
    a, b = read_wfdb(tmp_path / f"r{fmt}", None), _read_wfdb_lib(tmp_path / f"r{fmt}", None)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1:] == b[1:] and np.isnan(a[0]).sum() == 3


def test_parse_header_published_forms():
    from melp_fast.data.sources.common import parse_header

    ptb = parse_header("00001_hr 12 500 5000\n" + "".join(
        f"00001_hr.dat 16 1000.0(0)/mV 16 0 -115 13047 0 {n}\n" for n in
        ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]))
    assert ptb.fs == 500 and ptb.sig_len == 5000 and ptb.adc_gain[0] == 1000.0 and ptb.baseline[0] == 0
    assert [canonical_lead(n) for n in ptb.sig_name] == list(LEADS)
    cinc = parse_header("JS00001 12 500 5000 05-May-2020 14:50:55\nJS00001.mat 16+24 1000/mV 16 0 -254 21756 0 I\n"
                        + "JS00001.mat 16+24 1000/mV 16 0 264 -599 0 II\n" * 11 + "#Age: 85\n#Dx: 164889003,59118001\n")
    assert cinc.byte_offset[0] == 24 and cinc.file_name[0] == "JS00001.mat" and cinc.comments[1].startswith("Dx")
    mimic = parse_header("40689238 12 500 5000\n40689238.dat 16 200/mV 16 0 -62 -11370 0 aVF\n" * 1
                         + "40689238.dat 16 200/mV 16 0 0 0 0 V1\n" * 11)
    assert mimic.adc_gain[0] == 200 and mimic.sig_name[0] == "aVF"
    with pytest.raises(SkipRecord, match="signal lines"):
        parse_header("x 3 500 100\nx.dat 16 200/mV 16 0 0 0 0 I\n")
