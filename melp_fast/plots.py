"""Pictures (PNG, matplotlib's Agg backend): ROC curves of a task, and the beat attention of report sentences
drawn over a 12-lead ECG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data.constants import LEADS


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_roc(labels: np.ndarray, scores: dict[str, np.ndarray], classes: list[str], path, title: str = "") -> Path:
    """One panel per score set (e.g. zero-shot, linear probe), one ROC curve per class (classes with a single
    label value are left out), per-class AUROC in the legend, the macro mean in the panel title."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    labels = np.asarray(labels) > 0
    n = len(scores)
    fig, axes = plt.subplots(1, n, figsize=(6.2 * n, 6.4), squeeze=False)
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    for ax, (name, s) in zip(axes[0], scores.items()):
        s = np.asarray(s, dtype=np.float64)
        aucs = []
        for k, c in enumerate(classes):
            y = labels[:, k]
            if y.all() or not y.any() or not np.isfinite(s[:, k]).all():
                continue
            fpr, tpr, _ = roc_curve(y, s[:, k])
            a = roc_auc_score(y, s[:, k])
            aucs.append(a)
            ax.plot(fpr, tpr, lw=1.3, color=cmap(k % cmap.N), label=f"{c} {a:.2f}")
        ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", aspect="equal")
        ax.set_title(f"{name}: macro AUROC {np.mean(aucs):.3f}" if aucs else name, fontsize=11)
        ax.legend(fontsize=7 if len(classes) > 12 else 8, loc="lower right", ncol=2 if len(classes) > 12 else 1,
                  title="class  AUROC", title_fontsize=7, framealpha=0.85)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_attention(signal: np.ndarray, fs: float, beat_spans: np.ndarray, r_peaks: np.ndarray | None,
                   sentences: list[str], weights: np.ndarray, path, title: str = "",
                   leads=LEADS, attention_lead: str = "II", kind: str = "local", note: str = "") -> Path:
    """The 12 leads (top, with R peaks and beat boundaries marked) and, for each report sentence, one panel:
    the rhythm lead with every beat shaded by its attention weight for that sentence (A2 of the local loss;
    each sentence's weights sum to 1 over the beats), the weight printed above each beat.

    signal [12, samples] (mV, or any unit); beat_spans [K, 2] samples (half-open); weights [K, S]. ``note``: a line
    printed under the title (e.g. that the method's attention was flat and what is drawn instead)."""
    plt = _plt()
    from matplotlib import gridspec

    signal = np.asarray(signal, dtype=np.float64)
    spans = np.asarray(beat_spans, dtype=np.int64).reshape(-1, 2)
    W = np.asarray(weights, dtype=np.float64).reshape(len(spans), -1) if len(spans) else np.zeros((0, len(sentences)))
    t = np.arange(signal.shape[1]) / fs
    n_s = len(sentences)
    fig = plt.figure(figsize=(16, 0.62 * 12 + 1.55 * max(n_s, 1) + 1.2))
    gs = gridspec.GridSpec(2, 1, height_ratios=[0.62 * 12, 1.55 * max(n_s, 1)], hspace=0.12)
    top = gs[0].subgridspec(12, 1, hspace=0.0)
    ax0 = None
    for i in range(12):
        ax = fig.add_subplot(top[i], sharex=ax0)
        ax0 = ax0 or ax
        x = signal[i]
        ax.plot(t, x, lw=0.6, color="black")
        for (a, b) in spans:
            ax.axvline(a / fs, color="tab:blue", lw=0.4, alpha=0.5)
        if r_peaks is not None and len(r_peaks):
            rp = np.asarray(r_peaks, dtype=np.int64)
            rp = rp[(rp >= 0) & (rp < len(x))]
            ax.plot(rp / fs, x[rp], "v", color="tab:red", ms=3)
        ax.set_yticks([])
        ax.set_ylabel(leads[i], rotation=0, ha="right", va="center", fontsize=9)
        lo, hi = np.nanpercentile(x, [0.5, 99.5]) if np.isfinite(x).any() else (0, 1)
        pad = 0.15 * (hi - lo + 1e-9)
        ax.set_ylim(lo - pad, hi + pad)
        ax.tick_params(labelbottom=False, length=0)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        if i == 0:
            ax.set_title((title + "\n" if title else "") + (f"NOTE: {note}\n" if note else "")
                         + "12 leads: R peaks (red), beat boundaries (blue)", fontsize=11, loc="left")
    li = list(leads).index(attention_lead) if attention_lead in leads else 1
    bottom = gs[1].subgridspec(max(n_s, 1), 1, hspace=0.55)
    cmap = plt.get_cmap("RdBu_r")
    n_valid = max(len(spans), 1)
    u = 1.0 / n_valid  # the uniform weight
    for k in range(n_s):
        ax = fig.add_subplot(bottom[k], sharex=ax0)
        x = signal[li]
        dev = (W[:, k] - u) if W.size else np.zeros(0)
        # colour = deviation from uniform attention: red above, blue below, white at 1/K; a near-uniform sentence
        # stays pale (the scale never falls below a quarter of the uniform weight)
        scale = max(float(np.abs(dev).max()) if dev.size else 0.0, 0.25 * u)
        for q, (a, b) in enumerate(spans):
            w = W[q, k] if q < len(W) else 0.0
            ax.axvspan(a / fs, b / fs, color=cmap(0.5 + 0.45 * (w - u) / scale), alpha=0.8, lw=0)
            ax.text((a + b) / 2 / fs, 1.0, f"{w:.3f}", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7, color="0.25")
        ax.plot(t, x, lw=0.6, color="black")
        lo, hi = np.nanpercentile(x, [0.5, 99.5]) if np.isfinite(x).any() else (0, 1)
        pad = 0.15 * (hi - lo + 1e-9)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_yticks([])
        ax.set_ylabel(attention_lead, rotation=0, ha="right", va="center", fontsize=9)
        what = "beat attention A2 of the local loss" if kind == "local" else "beat similarity softmax(t1 cos)"
        ax.set_title(f'sentence {k + 1}: "{sentences[k]}"   {what} (sums to 1; red above, blue '
                     f'below the uniform 1/{n_valid} = {u:.3f})', fontsize=10, loc="left", pad=11)
        ax.tick_params(labelbottom=(k == n_s - 1))
    if n_s == 0:
        ax = fig.add_subplot(bottom[0])
        ax.text(0.5, 0.5, "no report sentence", ha="center", va="center")
        ax.axis("off")
    fig.axes[-1].set_xlabel("time (s)")
    ax0.set_xlim(0, t[-1] if len(t) else 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
