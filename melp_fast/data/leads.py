"""Lead completion: the limb leads a record does not store, derived from those it does.

The six limb leads hold two independent signals (Einthoven's and Goldberger's relations, exact for the ideal
electrodes every electrocardiograph assumes):

    III = II - I        aVR = -(I + II) / 2        aVL = I - II / 2        aVF = II - I / 2

so a record stored with I and II only (as GE MUSE and many carts export: I, II, V1-V6) loses nothing, and one
stored with III and one of I / II gives the other (I = II - III, II = I + III). ``complete_leads`` fills every
absent limb lead it can from these, in place, in the canonical order (``constants.LEADS``), and returns what it
derived and from what; a precordial lead (V1-V6) has no such relation and stays zero (masked) and named as
missing. Every reader (``sources.common.to_canonical``) and ``generate`` call this one function.
"""

from __future__ import annotations

import numpy as np

from .constants import LEADS

_I, _II, _III, _AVR, _AVL, _AVF = (LEADS.index(n) for n in ("I", "II", "III", "aVR", "aVL", "aVF"))

# (lead, formula text, function of (I, II)): the augmented leads and III, once I and II are known
_FROM_I_II = (
    ("III", "II - I", lambda i, ii: ii - i),
    ("aVR", "-(I + II) / 2", lambda i, ii: -(i + ii) / 2.0),
    ("aVL", "I - II / 2", lambda i, ii: i - ii / 2.0),
    ("aVF", "II - I / 2", lambda i, ii: ii - i / 2.0),
)


def absent_leads(x: np.ndarray) -> list[str]:
    """Leads of a canonical [12, T] signal that hold no signal (every sample zero): how a zero-filled missing lead
    looks once a reader has mapped the record."""
    x = np.asarray(x)
    return [LEADS[k] for k in range(len(LEADS)) if not np.any(x[k])]


def complete_leads(x: np.ndarray, missing=None) -> tuple[list[str], dict[str, str]]:
    """Derive the absent limb leads of ``x`` ([12, T], canonical order, physical units) in place.

    ``missing``: the leads the record did not store (default: those that are all zero). Returns
    (leads still missing, {derived lead: formula}); the first list holds the precordial leads that were absent,
    and any limb lead that could not be derived (fewer than two independent limb leads stored)."""
    if x.ndim != 2 or x.shape[0] != len(LEADS):
        raise ValueError(f"complete_leads expects a [{len(LEADS)}, samples] signal, got shape {tuple(x.shape)}")
    missing = set(absent_leads(x) if missing is None else missing)
    derived: dict[str, str] = {}
    if "I" in missing and "II" not in missing and "III" not in missing:
        x[_I] = x[_II] - x[_III]
        derived["I"] = "II - III"
    elif "II" in missing and "I" not in missing and "III" not in missing:
        x[_II] = x[_I] + x[_III]
        derived["II"] = "I + III"
    have_i_ii = not ({"I", "II"} & missing) or bool(derived)
    if have_i_ii:
        for lead, formula, f in _FROM_I_II:
            if lead in missing:
                x[LEADS.index(lead)] = f(x[_I], x[_II])
                derived[lead] = formula
    still = [lead for lead in LEADS if lead in missing and lead not in derived]
    return still, derived
