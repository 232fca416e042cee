"""melp_fast: multi-scale ECG-language pretraining (MELP), fast and checked against a reference path."""

__version__ = "0.1.0"
