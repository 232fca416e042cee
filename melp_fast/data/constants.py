"""The canonical signal every store holds: 12 leads in PTB-XL order, 500 Hz, 10 s (docs/SPEC.md, "Data")."""

FS = 500  # samples per second
N_SAMPLES = 5000  # 10 s
LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
