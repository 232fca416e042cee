"""The real 12-lead ECG test set: what a trained model's reports say about real recordings it never saw.

The set is ``tests/data/real/records.json`` (files, sources, the device's or the source's statements; licences in
``tests/data/README.md``). Each record is read by the project's readers (leads completed, 500 Hz, 10 s), the
model's beam report (width 4, as the demo) is grounded in the detected beats (``grounding.py``) and checked:

- ``expect``: words the report must contain ("sinus" on every sinus record, "atrial fibrillation" on every AF
  record);
- ``forbid``: words it must not contain (no infarction, ST elevation or block on a normal record; no atrial
  fibrillation on a record without it);
- a stated rate within 5 bpm of the rate measured from the detected beats (the raw model text's rate error is
  reported beside it).

Rhythm flags (statements the RR intervals contradict) and the record's own finding (named or not) are reported
apart, not scored. ``score_set(model)`` returns the rows; ``table(rows)`` the markdown table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# the set ships in the repository (tests/data/real), not in the installed package: found from an editable install
# or a clone; elsewhere pass its folder (``set_dir``, ``benchmarks/real_ecg.py --set-dir``)
SET_DIR = Path(__file__).resolve().parents[2] / "tests" / "data" / "real"
RATE_TOL_BPM = 5.0
_STATED_RATE = re.compile(r"\b(?:(?<!atrial )(?:ventricular |heart )?rate(?: of)?:? (\d{1,3})|(\d{1,3}) ?bpm)\b")


def load_set(set_dir=None) -> list[dict]:
    """The records of the set, each with ``path`` resolved (pydicom's file from the installed pydicom)."""
    d = Path(set_dir) if set_dir else SET_DIR
    listing = d / "records.json"
    if not listing.is_file():
        what = "no folder" if not d.is_dir() else "no records.json in it"
        raise FileNotFoundError(f"the real-ECG set is not in {d} ({what}): it ships in a clone of the repository "
                                "(tests/data/real); pass that folder")
    recs = json.loads(listing.read_text())["records"]
    for r in recs:
        if r["file"].startswith("pydicom:"):
            from pydicom.data import get_testdata_file

            r["path"] = get_testdata_file(r["file"].split(":", 1)[1])
        else:
            r["path"] = str(d / r["file"])
    return recs


def stated_rates(report: str) -> list[int]:
    return [int(a or b) for a, b in _STATED_RATE.findall(report)]


def check_report(report: str, rec: dict, rate_bpm: float) -> list[str]:
    """The problems of ``report`` on record ``rec`` (empty: the record's checks are met)."""
    t = report.lower()
    problems = [f"no '{w}'" for w in rec.get("expect", []) if w not in t]
    problems += [f"says '{w}'" for w in rec.get("forbid", []) if w in t]
    for n in stated_rates(t):
        if not abs(n - rate_bpm) <= RATE_TOL_BPM:
            problems.append(f"rate {n} vs {rate_bpm:.0f} measured")
    return problems


def score_record(model, rec: dict, beam_width: int = 4, max_len: int | None = None) -> dict:
    from ..inference import generate
    from ..data.sources.single import read_record
    from ..inference.grounding import ground_report

    raw, meta = read_record(rec["path"], raw=True, max_beats=model.cfg.max_beats)
    batch = generate.ecg_batch(raw, model)
    text = generate.generate_report(model, batch, "beam", beam_width=beam_width, max_len=max_len)
    g = ground_report(text, batch["r_peaks"], generate.FS)
    problems = check_report(g.text, rec, g.rate_bpm)
    raw_rate_err = [abs(n - g.rate_bpm) for n in stated_rates(g.raw)]
    finding = rec.get("finding")
    return {"id": rec["id"], "source": rec["source"], "statement": rec["statement"], "n_beats": len(batch["r_peaks"]),
            "rate_bpm": g.rate_bpm, "missing_leads": meta.get("missing_leads", []),
            "derived_leads": sorted(meta.get("derived_leads", {})), "report": g.text, "raw": g.raw,
            "raw_rate_error": max(raw_rate_err) if raw_rate_err else None, "flags": g.flags, "ok": not problems,
            "problems": problems, "finding": finding,
            "finding_named": None if not finding else finding in g.text.lower()}


def score_set(model, set_dir=None, beam_width: int = 4, progress=None, max_len: int | None = None) -> list[dict]:
    model.eval()
    rows = []
    for rec in load_set(set_dir):
        rows.append(score_record(model, rec, beam_width, max_len))
        if progress:
            progress(rows[-1])
    return rows


def summary(rows: list[dict]) -> str:
    ok = sum(r["ok"] for r in rows)
    far = [r for r in rows if r["raw_rate_error"] is not None and r["raw_rate_error"] > RATE_TOL_BPM]
    flagged = sum(bool(r["flags"]) for r in rows)
    sources = len({r["source"] for r in rows})
    return (f"Checks met on {ok}/{len(rows)} real ECGs ({100 * ok / max(len(rows), 1):.0f} %, {sources} sources); "
            f"raw model text stated a rate > {RATE_TOL_BPM:.0f} bpm off on {len(far)} (grounded: 0 by construction); "
            f"rhythm flags on {flagged}.")


def table(rows: list[dict]) -> str:
    lines = ["| record | source's statement | beats | bpm | leads derived / missing | checks | finding named (not "
             "scored) | flags | report (grounded) | raw model text |", "|---|---|---:|---:|---|---|---|---|---|---|"]
    for r in rows:
        leads = ", ".join(r["derived_leads"]) or "-"
        if r["missing_leads"]:
            leads += " / missing " + ", ".join(r["missing_leads"])
        verdict = "ok" if r["ok"] else "; ".join(r["problems"])
        raw = "same" if r["raw"] == r["report"] else r["raw"]
        finding = f"{r['finding']}: {'yes' if r['finding_named'] else 'no'}" if r["finding"] else "-"
        lines.append(f"| {r['id']} | {r['statement']} | {r['n_beats']} | {r['rate_bpm']:.0f} | {leads} | {verdict} | "
                     f"{finding} | {'; '.join(r['flags']) or '-'} | {r['report']} | {raw} |")
    return "\n".join(lines) + "\n\n" + summary(rows)


def demo_report(model, out_dir, beam_width: int = 4, max_len: int | None = None) -> list[dict] | None:
    """What ``melp-fast demo`` prints after pydicom's example: the model's score on the real set (one line per
    record and the summary), the table written to ``out_dir/real_set.md``; None (with a note) without the set."""
    try:
        recs = load_set()
    except FileNotFoundError as e:
        print(f"\n(skipped: {e})")
        return None
    print(f"\nThe real 12-lead ECG set ({len(recs)} recordings the model never saw, {len({r['source'] for r in recs})} "
          f"sources; reports grounded in the detected beats):")
    def line(r):
        problems = f"   [{'; '.join(r['problems'])}]" if r["problems"] else ""
        print(f"  {r['id']:<17} {'ok ' if r['ok'] else 'NO '} {r['report']}{problems}")

    rows = score_set(model, beam_width=beam_width, max_len=max_len, progress=line)
    print("  " + summary(rows))
    out = Path(out_dir) / "real_set.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# The demo model on the real 12-lead ECG set\n\n" + table(rows) + "\n")
    print(f"  table: {out}")
    return rows
