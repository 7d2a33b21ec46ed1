import json
import sys
from pathlib import Path

import pytest
import yaml
from support.cli_app import TinyData, TinyModel
from support.launch import run_script, script_env

from lightning_bninit import BNInit
from lightning_bninit.cli import BNInitCLI, BNInitOptions, bninit_callback_from_config

TRAINER_YAML = """\
seed_everything: 7
trainer:
  accelerator: cpu
  max_steps: 3
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
"""


def run_app(tmp_path: Path, *args: str, name: str = "out") -> dict:
    out = tmp_path / f"{name}.json"
    run_script("cli_app.py", "fit", *args, timeout=120, env=script_env(BNINIT_TEST_OUT=str(out), OMP_NUM_THREADS="1"))
    return json.loads(out.read_text())


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cli_app.py"])  # pytest's own flags are not the CLI's


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(TRAINER_YAML)
    return path


def test_generic_trainer_callbacks_flag_in_subprocess(tmp_path, config):
    info = run_app(tmp_path, "--config", str(config), f"--trainer.default_root_dir={tmp_path / 'r'}",
                   "--trainer.callbacks+=lightning_bninit.BNInit", "--trainer.callbacks.init_scale=0.05")
    assert info["bninit"] == [{"init_scale": 0.05, "scale_lr_divisor": 100.0, "exempt_weight_decay": True}]
    assert info["gamma_at_start"] == [0.05]


def test_bninit_flag_from_yaml_and_saved_config_replays(tmp_path, config):
    config.write_text(TRAINER_YAML + "bninit:\n  init_scale: 0.05\n")
    info = run_app(tmp_path, "--config", str(config), f"--trainer.default_root_dir={tmp_path / 'r1'}",
                   "--bninit.scale_lr_divisor=10")
    assert info["bninit"] == [{"init_scale": 0.05, "scale_lr_divisor": 10.0, "exempt_weight_decay": True}]
    assert info["gamma_at_start"] == [0.05]
    saved = Path(info["log_dir"]) / "config.yaml"
    assert yaml.safe_load(saved.read_text())["bninit"]["scale_lr_divisor"] == 10.0
    replay = run_app(tmp_path, "--config", str(saved), f"--trainer.default_root_dir={tmp_path / 'r2'}", name="replay")
    assert replay["bninit"] == info["bninit"] and replay["final_loss"] == info["final_loss"]


def test_bninit_true_uses_defaults_in_subprocess(tmp_path, config):
    info = run_app(tmp_path, "--config", str(config), f"--trainer.default_root_dir={tmp_path / 'r'}", "--bninit=true")
    assert info["bninit"] == [{"init_scale": 0.1, "scale_lr_divisor": 100.0, "exempt_weight_decay": True}]
    assert info["gamma_at_start"] == [0.1]


def cli(*args: str) -> BNInitCLI:
    return BNInitCLI(TinyModel, TinyData, run=False, args=["--trainer.logger=false", *args],
                     save_config_callback=None)


def bninit_callbacks(c: BNInitCLI) -> list[BNInit]:
    return [cb for cb in c.trainer.callbacks if isinstance(cb, BNInit)]


def test_off_by_default_and_toggle_semantics():
    assert bninit_callbacks(cli()) == []
    assert bninit_callbacks(cli("--bninit=false")) == []
    (cb,) = bninit_callbacks(cli("--bninit.init_scale=0.2"))  # an option implies on
    assert cb.method_settings.init_scale == 0.2 and cb.method_settings.scale_lr_divisor == 100.0
    assert bninit_callbacks(cli("--bninit.init_scale=0.2", "--bninit=false")) == []  # left to right
    (cb,) = bninit_callbacks(cli("--bninit=true", "--bninit.init_scale=1.0", "--bninit.scale_lr_divisor=1.0"))
    assert (cb.method_settings.init_scale, cb.method_settings.scale_lr_divisor) == (1.0, 1.0)


def test_enabled_twice_is_an_error():
    with pytest.raises(ValueError, match="BNInit is enabled twice"):
        cli("--bninit=true", "--trainer.callbacks+=lightning_bninit.BNInit")


def test_print_config_shows_the_flag(capsys):
    for args, expect in (([], "bninit: false"), (["--bninit.init_scale=0.05"], "init_scale: 0.05")):
        with pytest.raises(SystemExit):
            BNInitCLI(TinyModel, TinyData, args=["fit", *args, "--print_config"])
        assert expect in capsys.readouterr().out


def test_options_mirror_the_callback_signature():
    import dataclasses
    import inspect

    names = [f.name for f in dataclasses.fields(BNInitOptions)]
    assert names == [p for p in inspect.signature(BNInit.__init__).parameters if p != "self"]
    assert bninit_callback_from_config(None) is None and bninit_callback_from_config(False) is None
    assert bninit_callback_from_config({"init_scale": 0.3}).method_settings.init_scale == 0.3
    with pytest.raises(TypeError, match="bninit must be"):
        bninit_callback_from_config(3)


def test_exempt_weight_decay_flag_takes_one_d():
    (cb,) = bninit_callbacks(cli("--bninit.exempt_weight_decay=1d"))
    assert cb.method_settings.exempt_weight_decay == "1d"
    (cb,) = bninit_callbacks(cli("--bninit.exempt_weight_decay=false"))
    assert cb.method_settings.exempt_weight_decay is False
    with pytest.raises(SystemExit):  # jsonargparse reports the value that is neither a bool nor "1d"
        cli("--bninit.exempt_weight_decay=2d")
