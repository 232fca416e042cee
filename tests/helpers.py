"""Shared test helpers (importable from the test files: pytest puts tests/ on sys.path)."""


def tiny_cfg(**model):
    """The tiny preset shrunk further, with a random 2-layer BERT: models that build and run in a second."""
    from melp_fast.config import get_preset

    cfg = get_preset("tiny")
    cfg.model.text_encoder = "random:tiny"
    cfg.model.text_freeze_layers = 1
    cfg.model.width, cfg.model.ffn, cfg.model.conv_channels = 64, 128, 32
    for k, v in model.items():
        setattr(cfg.model, k, v)
    return cfg


def free_port() -> int:
    """A TCP port free on loopback now (launchers of concurrent test runs must not collide on a fixed one)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
