"""Report text: the cleaning rule of docs/SPEC.md ("Data") and sentence splitting."""

from __future__ import annotations

import re

_WS = re.compile(r"[\n\r\t]+")
_SPACES = re.compile(r" {2,}")


def clean_report(parts) -> str:
    """Join report statements and clean them as the reference does.

    `parts` is one string or the report_0..report_N statements (None / NaN / empty ones are skipped).
    Joined with ". ", "EKG" -> "ECG", "***", "=-" and "=" removed, newlines and tabs dropped, lower-case,
    ending with ".". Returns "" when nothing is left.
    """
    if isinstance(parts, str):
        parts = [parts]
    kept = []
    for p in parts:
        if p is None or (isinstance(p, float) and p != p):
            continue
        p = str(p).replace("EKG", "ECG").replace("***", "").replace("=-", "").replace("=", "")
        p = _SPACES.sub(" ", _WS.sub(" ", p)).strip().rstrip(".").strip().lower()
        if p:
            kept.append(p)
    text = ". ".join(kept)
    return text + "." if text else ""


def split_sentences(report: str) -> list[str]:
    """Split after each "." into sentences (stripped, non-empty, each keeping its period)."""
    out = []
    for piece in report.split("."):
        piece = piece.strip()
        if piece:
            out.append(piece + ".")
    return out


def word_count(report: str) -> int:
    return len(report.replace(".", " ").split())
