"""Configuration from the command line: typed `--set` for both training scripts, presets, and DeepSpeed JSON files
that hold only what they decide (a conflicting batch size is refused, not overwritten)."""

import json
from pathlib import Path

import pytest

from melp_fast.config import Config, TextPretrainConfig, apply_overrides, get_preset, valid_keys
from melp_fast.training.engine import DEFAULT_DS_CONFIG, load_ds_config
from melp_fast.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def test_set_parses_each_field_as_its_type():
    cfg = apply_overrides(get_preset("tiny"), ["train.steps=7", "train.lr=1", "data.source=123", "train.betas=[0.8,0.9]",
                                               "model.text_encoder=random:tiny", "loss.impl=reference"])
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.source == "123" and cfg.train.betas == (0.8, 0.9)
    assert cfg.model.text_encoder == "random:tiny" and cfg.loss.impl == "reference"
    text = apply_overrides(TextPretrainConfig(), ["train.warmup_steps=3", "vocab.min_count=5", "model.init=random:tiny",
                                                  "data.reports=reports.txt"])
    assert (text.train.warmup_steps, text.vocab.min_count, text.model.init) == (3, 5, "random:tiny")
    assert apply_overrides(text, ["train.warmup_steps=null"]).train.warmup_steps is None
    # round trip through JSON
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg
    assert TextPretrainConfig.from_dict(json.loads(text.to_json())) == text


@pytest.mark.parametrize("item, words", [
    ("train.steps=abc", ["train.steps takes int", "'abc'"]),
    ("train.lr=true", ["train.lr takes float"]),
    ("train.stepz=3", ["unknown key 'train.stepz'", "train.steps", "train.batch_size"]),
    ("trian.steps=3", ["unknown section 'trian'", "model, loss, data, train"]),
    ("train.steps", ["expected section.field=value"]),
    ("loss.impl=fast", ["loss.impl must be one of reference, fused, auto"]),
])
def test_bad_set_is_a_one_line_user_error(item, words):
    with pytest.raises(UserError) as e:
        apply_overrides(get_preset("tiny"), [item])
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_text_pretrain_keys_and_unknown_preset():
    keys = valid_keys(TextPretrainConfig())
    assert {"model.init", "data.reports", "vocab.min_count", "train.probe_steps", "train.keep_checkpoints"} <= set(keys)
    with pytest.raises(UserError, match="unknown key 'vocab.min_cout'.*vocab.min_count"):
        apply_overrides(TextPretrainConfig(), ["vocab.min_cout=2"])
    with pytest.raises(UserError, match="unknown preset 'huge'; choose one of paper, tiny"):
        get_preset("huge")


def test_ds_config_files_hold_only_what_they_decide(tmp_path):
    for f in sorted((ROOT / "configs").glob("*.json")):
        d = json.loads(f.read_text())
        assert "train_micro_batch_size_per_gpu" not in d and "train_batch_size" not in d, f
        assert "zero_optimization" in d, f
        ds = load_ds_config(f, batch_size=6, world=2)
        assert ds["train_micro_batch_size_per_gpu"] == 6 and ds["train_batch_size"] == 12
        assert ds["zero_optimization"] == d["zero_optimization"]  # the file's choice, not the default
    assert load_ds_config(None, 4, 1)["gradient_clipping"] == DEFAULT_DS_CONFIG["gradient_clipping"]


def test_ds_config_conflicts_and_bad_files_are_user_errors(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"train_micro_batch_size_per_gpu": 64, "zero_optimization": {"stage": 1}}))
    with pytest.raises(UserError, match=r"mine.json: train_micro_batch_size_per_gpu is 64, but this run has 8"):
        load_ds_config(f, batch_size=8, world=1)
    assert load_ds_config(f, batch_size=64, world=1)["train_micro_batch_size_per_gpu"] == 64  # agreeing is fine
    f.write_text(json.dumps({"train_batch_size": 32, "gradient_accumulation_steps": 2}))
    with pytest.raises(UserError, match=r"train_batch_size is 32, but this run has 64 .*8 per process x 2 .* x 4"):
        load_ds_config(f, batch_size=8, world=4)
    f.write_text('{"zero_optimization": {"stage": 1},}')
    with pytest.raises(UserError, match=r"mine.json is not a JSON file \(line 1"):
        load_ds_config(f, 8, 1)
    f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(UserError, match="mine.json is not a JSON file"):
        load_ds_config(f, 8, 1)
    f.write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        load_ds_config(f, 8, 1)
    with pytest.raises(UserError, match="nowhere.json: no such file"):
        load_ds_config(tmp_path / "nowhere.json", 8, 1)
