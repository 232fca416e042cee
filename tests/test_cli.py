"""The command line: one vocabulary, `prog` per subcommand, help on every flag, `--help` before any heavy import,
recipe files (--config, presets), and a past run re-run from its folder's config.json with the same losses."""

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_python
from melp_fast import options
from melp_fast.config import (PRESET_DIR, PRESETS, Config, TextPretrainConfig, base_config, get_preset, load_recipe,
                              valid_keys)
from melp_fast.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
PARSED = [name for name, (_, _, parser) in options.COMMANDS.items() if parser is not None]
HEAVY = ("torch", "deepspeed", "transformers", "numba", "triton")

HELP_PROBE = r"""
import contextlib, io, sys
from melp_fast.cli import main
for sub in sys.argv[1:]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            code = main([sub, "--help"])
        except SystemExit as e:
            code = e.code
    text = buf.getvalue()
    print(f"{sub}\t{code}\t{text.splitlines()[0] if text else ''}\t{'--debug' in text}")
print("heavy:", ",".join(m for m in %r if m in sys.modules))
""" % (HEAVY,)


def test_help_of_every_subcommand_is_answered_before_any_heavy_import():
    subs = list(options.COMMANDS)
    r = subprocess.run([sys.executable, "-c", HELP_PROBE, *subs], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[-1].strip() == "heavy:", f"imported before --help was answered: {lines[-1]}"
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in lines[:-1]}
    assert set(rows) == set(subs)
    for sub in PARSED:
        code, first, debug = rows[sub]
        assert code == "0" and first.startswith(f"usage: melp-fast {sub} "), (sub, code, first)
        assert debug == "True", f"melp-fast {sub} --help does not show --debug"
    assert rows["launch"][0] == "0" and rows["launch"][2] == "True"


def test_help_probe_sees_a_heavy_import():
    """The probe's check can fail: a help path that imports torch is reported."""
    probe = HELP_PROBE.replace("from melp_fast.cli import main", "import torch\nfrom melp_fast.cli import main")
    r = subprocess.run([sys.executable, "-c", probe, "demo"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("heavy: torch"), r.stdout


def flags_without_help(parser: argparse.ArgumentParser) -> list[str]:
    return [a.option_strings[0] for a in parser._actions
            if a.option_strings and a.help != argparse.SUPPRESS and not (a.help or "").strip()]


@pytest.mark.parametrize("name", PARSED)
def test_every_flag_has_help_and_the_subcommand_is_the_prog(name):
    parser = options.COMMANDS[name][2]()
    assert parser.prog == f"melp-fast {name}"
    assert parser.description, f"melp-fast {name}: no description (its module's docstring)"
    assert flags_without_help(parser) == []
    assert "--debug" in parser._option_string_actions


def test_a_flag_without_help_is_reported():
    p = options.new_parser("x")
    p.add_argument("--bare")
    p.add_argument("--hidden", help=argparse.SUPPRESS)
    assert flags_without_help(p) == ["--bare"]


def test_one_vocabulary_and_the_old_names():
    """--data, --model, --ds-config in every command that has them; --store, --reports, --ckpt, --ds_config still
    parse to the same thing."""
    a = options.parse("evaluate", ["--ckpt", "m", "--store", "s", "--ckpt", "n"])
    b = options.parse("evaluate", ["--model", "m", "--data", "s", "--model", "n"])
    assert (a.model, a.data) == (b.model, b.data) == (["m", "n"], ["s"])
    assert options.parse("generate", ["--ckpt", "m", "--ecg", "e"]).model == "m"
    assert options.parse("generate", ["--model", "m", "--ecg", "e"]).model == "m"
    assert options.parse("zero-shot", ["--model", "m", "--store", "s"]).data == "s"
    assert options.parse("zero-shot", ["--model", "m", "--data", "s"]).data == "s"
    assert getattr(options.parse("pretrain-text", ["--reports", "r.txt"]), "data.reports") == "r.txt"
    assert getattr(options.parse("pretrain-text", ["--data", "r.txt"]), "data.reports") == "r.txt"
    assert getattr(options.parse("train", ["--data", "st"]), "data.source") == "st"
    for name in ("train", "pretrain-text", "demo"):
        assert options.parse(name, ["--ds_config", "a.json"]).ds_config == "a.json"
        assert options.parse(name, ["--ds-config", "a.json"]).ds_config == "a.json"
    for name in PARSED:  # the data argument is --data wherever a command reads a store
        flags = options.COMMANDS[name][2]()._option_string_actions
        assert "--store" not in flags or flags["--store"] is flags["--data"], name
        assert "--ckpt" not in flags or flags["--ckpt"] is flags["--model"], name


def test_choices_match_the_modules():
    from melp_fast.data.preprocess import PROTOCOL_WINDOWS
    from melp_fast.data.sources import SOURCES
    from melp_fast.data.store import SHARD_SIZE
    from melp_fast.eval.metrics import SCORINGS
    from melp_fast.eval.tasks import PROTOCOLS

    assert options.SOURCES == tuple(SOURCES)
    assert options.PREPROCESS_PROTOCOLS == tuple(PROTOCOL_WINDOWS)
    assert options.SHARD_SIZE == SHARD_SIZE
    assert options.SCORINGS == tuple(SCORINGS)
    assert options.EVAL_PROTOCOLS == tuple(PROTOCOLS)


def test_cli_errors_before_import(capsys):
    """A wrong flag is argparse's usage error (exit 2) naming the subcommand."""
    from melp_fast.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--no-such-flag"])
    assert e.value.code == 2
    assert "usage: melp-fast train" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------- recipes
def test_presets_are_complete_recipe_files():
    assert set(PRESETS) >= {"tiny", "paper"}
    for name in PRESETS:
        data = json.loads((PRESET_DIR / f"{name}.json").read_text())
        named = {f"{s}.{k}" for s, fields in data.items() for k in fields}
        missing = sorted(set(valid_keys(Config())) - named)
        assert not missing, f"configs/presets/{name}.json leaves out {missing}: write every field in a preset"
        assert json.loads(get_preset(name).to_json()) == data  # every value read as written


def test_recipe_json_and_yaml(tmp_path):
    recipe = {"model": {"width": 96, "heads": 4}, "train": {"steps": 7, "betas": [0.8, 0.9], "lr": 1}}
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    (tmp_path / "r.yaml").write_text("model:\n  width: 96\n  heads: 4\ntrain:\n  steps: 7\n  betas: [0.8, 0.9]\n"
                                     "  lr: 1\n")
    a, b = load_recipe(tmp_path / "r.json"), load_recipe(tmp_path / "r.yaml")
    assert a == b
    assert (a.model.width, a.model.heads, a.train.steps, a.train.betas, a.train.lr) == (96, 4, 7, (0.8, 0.9), 1.0)
    assert isinstance(a.train.lr, float)
    assert a.model.layers == Config().model.layers  # left out: the default


@pytest.mark.parametrize("text,message", [
    ('{"model": {"widht": 3}}', "unknown key 'model.widht'"),
    ('{"modle": {}}', "unknown section 'modle'"),
    ('{"train": {"steps": "many"}}', "train.steps takes int"),
    ('{"train": {"steps": true}}', "train.steps takes int"),
    ('{"loss": {"impl": "fast"}}', "loss.impl must be one of"),
    ('{"model": 3}', "section 'model' must be a mapping"),
    ('[1, 2]', "expected a mapping of sections"),
    ('{"model": {', "is not a JSON file"),
])
def test_a_bad_recipe_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_recipe(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_recipe_file_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_recipe(tmp_path / "none.json")
    (tmp_path / "r.toml").write_text("")
    with pytest.raises(UserError, match=r"\.json, \.yaml or \.yml"):
        load_recipe(tmp_path / "r.toml")
    args = argparse.Namespace(config=str(tmp_path / "r.json"), preset="tiny")
    with pytest.raises(UserError, match="give one recipe"):
        base_config(args, Config)
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_text_recipe_reads_its_saved_args(tmp_path):
    cfg = TextPretrainConfig()
    cfg.train.lr, cfg.vocab.min_count = 5e-5, 7
    (tmp_path / "pretrain_args.json").write_text(json.dumps({**cfg.to_dict(), "reports_stats": {"lines": 3}}))
    assert load_recipe(tmp_path / "pretrain_args.json", TextPretrainConfig) == cfg


def test_flags_and_set_go_on_top_of_the_recipe(tmp_path):
    from melp_fast.config import from_args

    (tmp_path / "r.json").write_text(json.dumps({"train": {"steps": 5, "lr": 0.5}}))
    args = options.parse("train", ["--config", str(tmp_path / "r.json"), "--set", "train.steps=6", "--set",
                                   "train.lr=0.25", "--steps", "9"])
    cfg = from_args(base_config(args, Config, default_preset="tiny"), args, options.TRAIN_FLAGS)
    assert (cfg.train.steps, cfg.train.lr, cfg.model.width) == (9, 0.25, Config().model.width)
    tiny = from_args(base_config(options.parse("train", []), Config, default_preset="tiny"),
                     options.parse("train", []), options.TRAIN_FLAGS)
    assert tiny == get_preset("tiny")


# ---------------------------------------------------------------------------------------------- a run, re-run
SMALL = ["--preset", "tiny", "--text-encoder", "random:tiny", "--batch-size", "4", "--steps", "2",
         "--set", "data.n_train=8", "--set", "model.width=32", "--set", "model.ffn=64", "--set", "model.heads=2",
         "--set", "model.conv_channels=16", "--set", "model.text_freeze_layers=1", "--set", "train.warmup_steps=1",
         "--set", "model.dropout=0.1", "--quiet"]
COMPARED = ("loss", "global", "local", "caption", "lr", "logit_scale")


def run_train(args):
    return run_python("import sys; from melp_fast.cli import main; sys.exit(main(['train', *sys.argv[1:]]))", args)


def history(out):
    return [{k: r[k] for k in ("step", *COMPARED)} for r in map(json.loads, (out / "history.jsonl").read_text().splitlines())]


def test_a_run_reruns_from_its_saved_config(tmp_path):
    """Train tiny for 2 steps (CPU, fp32, fixed seed), then run `train --config RUN/config.json` into a new folder:
    the same configuration and exactly the same losses."""
    first, again = tmp_path / "first", tmp_path / "again"
    ds = ["--ds-config", str(ROOT / "configs/cpu_fp32.json")]
    r = run_train([*SMALL, *ds, "--out", str(first)])
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_train(["--config", str(first / "config.json"), "--quiet", "--ds_config", str(ROOT / "configs/cpu_fp32.json"),
                   "--out", str(again)])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = json.loads((first / "config.json").read_text()), json.loads((again / "config.json").read_text())
    assert b["train"].pop("out_dir") == str(again) and a["train"].pop("out_dir") == str(first)
    assert a == b
    h1, h2 = history(first), history(again)
    assert [h["step"] for h in h1] == [1, 2]
    assert h1 == h2  # exactly: the same floats
    # a recipe that names the first run's folder is refused there without --resume / --overwrite
    r = run_train(["--config", str(first / "config.json"), "--quiet"])
    assert r.returncode == 2 and "error:" in r.stderr and "\n" not in r.stderr.strip(), r.stderr[-2000:]


def test_config_fields_are_dataclass_fields():
    """valid_keys, which the preset check relies on, lists every field (a check that reads nothing cannot pass)."""
    keys = valid_keys(Config())
    assert len(keys) == sum(len(dataclasses.fields(getattr(Config(), s.name))) for s in dataclasses.fields(Config))
    assert "train.steps" in keys and "model.width" in keys
