"""Linear probing on frozen features: one linear layer, BCE with logits, AdamW, fixed epochs and seeds.

The features are the encoder's 256-d global feature before the last projection (``encode_ecg(...)["features"]``).
Training subsets are 1%, 10% and 100% of the training split, stratified, seeded and NESTED (the 1% subset is
drawn from the 10% subset, which is drawn from the whole split; ``data.tasks.train_subset`` does each draw).
Scores are per-class AUROC of the probe's logits on the test split (no softmax across classes: the tasks are
multi-label; docs/SPEC.md, "Evaluation", names the reference's softmax as a quirk not to copy) and their macro mean.

Choices (documented, fixed): the features are standardised with the mean / std of the training subset (an affine
map that the linear layer could absorb, so the probe is still one linear layer); the layer starts at zero (the
first step then points along the class-mean differences, so tiny subsets do not score a random initialisation);
AdamW lr 1e-3, weight decay 0.01, mini-batches of 64, a fixed number of epochs, no model selection. A class with
one label value in a training subset cannot be learnt: it is skipped (NaN) and listed under "skipped"; a class
with one label value in the test split has no AUROC (NaN, listed under "undefined").

Under ``evaluate --protocol melp`` (``reference_probe``) the probe is trained as the MELP reference trains it
(``ssl_finetuner.py``, ``main_finetune.py``): subsets are ``DataFrame.sample(frac, random_state=42)`` of the train
split file (drawn by the caller), raw features, PyTorch's default init (seeded), every class trained and scored
(also one without a positive in the subset), AdamW lr 1e-3, weight decay 1e-4, batches of 128, cosine schedule
over 100 epochs to 1e-5, forward passes under bf16 autocast (Lightning's ``precision="bf16-mixed"``: bf16
logits, fp32 loss and weights), early stopping on the validation split (Lightning's EarlyStopping: patience 5,
strict improvement, a non-finite value stops; ModelCheckpoint keeps the best epoch's weights for the test).
The metric that selects the epoch and scores the test set is the run's ``scoring`` (``metrics.SCORINGS``):
"reference" = torchmetrics' multilabel macro AUROC of ``logits.softmax(-1)``, exactly the reference's;
"per-class" = our per-class AUROC of the logits. Only an empty subset is reported as not available.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.tasks import train_subset
from .metrics import SCORINGS, auroc, bootstrap_ci, nanmean, reference_auroc, softmax

FRACTIONS = (0.01, 0.1, 1.0)


def nested_subsets(train_idx, labels, fractions=FRACTIONS, seed: int = 42) -> dict[float, np.ndarray]:
    """{fraction: sorted indices}: stratified, seeded subsets of ``train_idx`` with each smaller one drawn from
    the next larger one (so 1% is inside 10% is inside 100%). ``labels``: multi-hot [N, C] over the whole store."""
    train_idx = np.sort(np.asarray(train_idx, dtype=np.int64))
    out: dict[float, np.ndarray] = {}
    parent, parent_frac = train_idx, 1.0
    for f in sorted(set(float(x) for x in fractions), reverse=True):
        if not 0 < f <= 1:
            raise ValueError(f"training fraction {f} is not in (0, 1]")
        sub = parent if f >= parent_frac else train_subset(parent, labels, f / parent_frac, seed)
        out[f] = np.sort(sub)
        parent, parent_frac = out[f], f
    return {f: out[f] for f in sorted(out)}


def fit_probe(x: np.ndarray, y: np.ndarray, epochs: int = 100, lr: float = 1e-3, weight_decay: float = 0.01,
              batch_size: int = 64, seed: int = 0) -> dict:
    """Train one linear layer (zero-initialised, on standardised features) with BCE-with-logits and AdamW.
    Returns {"weight" [C, D], "bias" [C], "mean" [D], "std" [D]} as numpy arrays."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit_probe: features [n, d] and labels [n, c] with n > 0, got {x.shape}, {y.shape}")
    mean = x.mean(0)
    std = x.std(0) + 1e-6
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], y.shape[1])
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(xt)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            loss = F.binary_cross_entropy_with_logits(layer(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {"weight": layer.weight.detach().numpy().copy(), "bias": layer.bias.detach().numpy().copy(),
            "mean": mean, "std": std}


def predict(probe: dict, x: np.ndarray) -> np.ndarray:
    """Logits [n, C] of a fitted probe (per-class scores; no softmax)."""
    z = (np.asarray(x, dtype=np.float32) - probe["mean"]) / probe["std"]
    return z @ probe["weight"].T + probe["bias"]


def linear_probe(feats: np.ndarray, labels: np.ndarray, train_idx, test_idx, classes: list[str],
                 fractions=FRACTIONS, seed: int = 42, epochs: int = 100, lr: float = 1e-3, n_boot: int = 0,
                 boot_seed: int = 0) -> dict:
    """Probe at every training fraction. ``feats`` [N, D] and ``labels`` [N, C] cover a whole store (or the
    concatenation of a train and a test store); ``train_idx`` / ``test_idx`` index them.

    Returns {"fractions": {"1%": {"per_class", "mean", "n_train", "skipped", "undefined", ["ci"]}, ...},
    "scores": {"1%": logits on test}}; "scores" feeds ROC plots and is left out of JSON by the caller."""
    labels = np.asarray(labels, dtype=np.float32)
    test_idx = np.asarray(test_idx, dtype=np.int64)
    subsets = nested_subsets(train_idx, labels, fractions, seed)
    y_test = labels[test_idx]
    res, scores = {}, {}
    for f, idx in subsets.items():
        y = labels[idx]
        pos = y.sum(0)
        learnable = (pos > 0) & (pos < len(idx))
        probe = fit_probe(feats[idx], y, epochs=epochs, lr=lr, seed=seed)
        s = predict(probe, feats[test_idx])
        s[:, ~learnable] = np.nan  # a class with one label value in the subset is skipped
        auc = auroc(s, y_test)
        per_class = {c: float(a) for c, a in zip(classes, auc)}
        key = fraction_label(f)
        entry = {"per_class": per_class, "mean": nanmean(auc), "n_train": int(len(idx)), "scoring": "per-class",
                 "skipped": [c for c, ok in zip(classes, learnable) if not ok],
                 "undefined": [c for c, a, ok in zip(classes, auc, learnable) if ok and not np.isfinite(a)]}
        if n_boot:
            entry["ci"] = bootstrap_ci(s, y_test, classes, n_boot=n_boot, seed=boot_seed)
        res[key] = entry
        scores[key] = s
    return {"fractions": res, "scores": scores}


def fraction_label(f: float) -> str:
    p = f * 100
    return f"{p:g}%"


def _logits(layer: torch.nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """The layer's logits, under bf16 autocast when ``bf16`` (bf16 matmul, bf16 result), as float32."""
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = layer(x)
    return out.float()


def probe_scores(logits: np.ndarray, scoring: str) -> np.ndarray:
    """What a scoring computes its AUROC on: the logits ("per-class") or their softmax across classes
    ("reference")."""
    return softmax(logits) if scoring == "reference" else np.asarray(logits)


def macro_score(logits: np.ndarray, labels: np.ndarray, scoring: str) -> float:
    """The scoring's macro AUROC of logits [n, C] (NaN on an empty set)."""
    if len(logits) == 0:
        return float("nan")
    if scoring == "reference":
        return nanmean(reference_auroc(softmax(logits), labels))
    return nanmean(auroc(logits, labels))


def fit_probe_early_stopping(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                             max_epochs: int = 100, patience: int = 5, lr: float = 1e-3, weight_decay: float = 1e-4,
                             final_lr: float = 1e-5, batch_size: int = 128, seed: int = 42, scoring: str = "per-class",
                             bf16: bool = False) -> dict:
    """The reference's probe: one linear layer (default init under ``seed``) on raw features, BCE with logits,
    AdamW + cosine schedule, the validation macro AUROC of ``scoring`` after every epoch; training stops after
    ``patience`` epochs without a strict improvement and the best epoch's weights are kept.
    ``scoring="reference"`` follows Lightning's callbacks exactly: a non-finite validation value stops training
    (EarlyStopping's check_finite) and the first epoch is always kept by ModelCheckpoint; ``"per-class"`` keeps
    training through undefined values (the last weights when the value is never defined). ``bf16``: forward
    passes under bf16 autocast (the reference's ``bf16-mixed``). Returns the probe dict of ``fit_probe`` (mean 0,
    std 1, "bf16") with "epochs", "best_epoch", "best_val"."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r} (choose from {', '.join(SCORINGS)})")
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit_probe_early_stopping: features [n, d] and labels [n, c] with n > 0, got {x.shape}, "
                         f"{y.shape}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max_epochs, eta_min=final_lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    xv = torch.from_numpy(np.asarray(x_val, dtype=np.float32).reshape(-1, x.shape[1]))
    best, best_state, best_epoch, since, epoch = -np.inf, None, -1, 0, 0
    for epoch in range(max_epochs):
        perm = torch.randperm(len(xt), generator=g)
        for s in range(0, len(xt), batch_size):
            idx = perm[s:s + batch_size]
            loss = F.binary_cross_entropy_with_logits(_logits(layer, xt[idx], bf16), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        with torch.no_grad():
            val = macro_score(_logits(layer, xv, bf16).numpy(), y_val, scoring)
        if scoring == "reference":
            if best_state is None or (np.isfinite(val) and val > best):  # ModelCheckpoint (NaN counts as -inf)
                best_state = (layer.weight.detach().clone(), layer.bias.detach().clone())
                best_epoch = epoch
            if not np.isfinite(val):  # EarlyStopping(check_finite=True)
                break
            if val > best:
                best, since = val, 0
            else:
                since += 1
                if since >= patience:
                    break
            continue
        if np.isfinite(val) and val > best:
            best, best_epoch, since = val, epoch, 0
            best_state = (layer.weight.detach().clone(), layer.bias.detach().clone())
        else:
            since += 1
            if np.isfinite(best) and since >= patience:
                break
    w, b = best_state if best_state is not None else (layer.weight.detach(), layer.bias.detach())
    d = x.shape[1]
    return {"weight": w.numpy().copy(), "bias": b.numpy().copy(), "mean": np.zeros(d, np.float32),
            "std": np.ones(d, np.float32), "bf16": bool(bf16), "epochs": epoch + 1, "best_epoch": best_epoch + 1,
            "best_val": float(best) if np.isfinite(best) else float("nan")}


def probe_logits(probe: dict, x: np.ndarray) -> np.ndarray:
    """Logits [n, C] of a probe of ``fit_probe_early_stopping``, under bf16 autocast when it was trained so (the
    reference's test step runs under the same autocast)."""
    layer = torch.nn.Linear(probe["weight"].shape[1], probe["weight"].shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(probe["weight"]))
        layer.bias.copy_(torch.from_numpy(probe["bias"]))
        z = torch.from_numpy((np.asarray(x, dtype=np.float32) - probe["mean"]) / probe["std"])
        return _logits(layer, z, bool(probe.get("bf16"))).numpy()


def reference_probe(feats: np.ndarray, labels: np.ndarray, subsets: dict, val_idx, test_idx, classes: list[str],
                    seed: int = 42, max_epochs: int = 100, n_boot: int = 0, boot_seed: int = 0,
                    scoring: str = "per-class", bf16: bool = True) -> dict:
    """The probe of ``--protocol melp`` at every training subset (``subsets``: {fraction: indices into feats},
    the reference's samples of the train split restricted to the records present); early stopping on
    ``val_idx`` and the test score on ``test_idx``, both by ``scoring``. Every class is trained and scored, as in
    the reference. Returns {"fractions": {"1%": entry}, "scores": {"1%": what the AUROC was computed on},
    "logits": {"1%": test logits}}; entry = {"per_class", "mean", "scoring", "n_train", "undefined" (one label
    value in the test set), "no_train_positive" (no positive in the subset; still scored), "skipped" ([]),
    "epochs", "best_epoch", "best_val", ["ci"]}. An empty subset gets "not_available" (scores NaN)."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r} (choose from {', '.join(SCORINGS)})")
    labels = np.asarray(labels, dtype=np.float32)
    val_idx, test_idx = np.asarray(val_idx, np.int64), np.asarray(test_idx, np.int64)
    y_test = labels[test_idx]
    metric = reference_auroc if scoring == "reference" else auroc
    res, scores, logits = {}, {}, {}
    for f in sorted(subsets):
        idx = np.asarray(subsets[f], dtype=np.int64)
        key = fraction_label(f)
        pos = labels[idx].sum(0)
        z = np.full(y_test.shape, np.nan, np.float32)
        why = "empty training sample" if len(idx) == 0 else ("empty test set" if len(test_idx) == 0 else None)
        entry = {"n_train": int(len(idx)), "scoring": scoring, "skipped": [],
                 "no_train_positive": [c for c, p in zip(classes, pos) if p == 0] if len(idx) else []}
        if why is None:
            probe = fit_probe_early_stopping(feats[idx], labels[idx], feats[val_idx], labels[val_idx],
                                             max_epochs=max_epochs, seed=seed, scoring=scoring, bf16=bf16)
            z = probe_logits(probe, feats[test_idx])
            entry.update(epochs=probe["epochs"], best_epoch=probe["best_epoch"], best_val=probe["best_val"])
        else:
            entry["not_available"] = why
        s = probe_scores(z, scoring)
        auc = metric(s, y_test) if len(test_idx) and why is None else np.full(len(classes), np.nan)
        n1 = y_test.sum(0)
        entry.update(per_class={c: float(a) for c, a in zip(classes, auc)}, mean=nanmean(auc),
                     undefined=[c for c, p in zip(classes, n1) if p == 0 or p == len(y_test)])
        if n_boot and why is None:
            entry["ci"] = bootstrap_ci(s, y_test, classes, n_boot=n_boot, seed=boot_seed, metric=metric)
        res[key] = entry
        scores[key] = s
        logits[key] = z
    return {"fractions": res, "scores": scores, "logits": logits}
