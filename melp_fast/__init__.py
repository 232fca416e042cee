"""melp_fast: multi-scale ECG-language pretraining (MELP), fast and checked against a reference path."""

__version__ = "0.1.0"


def load_model(path, device="cpu"):
    """Load an exported model (see melp_fast.inference.export)."""
    from .inference.export import load_model as _load

    return _load(path, device)
