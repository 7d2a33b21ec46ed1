"""Packaging: license, metadata, version in one place, the command's --version and help text."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata

from support.launch import ROOT, script_env

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _bninit(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_bninit", *argv], capture_output=True, text=True,
                          timeout=60, env=script_env())


def test_license_file_matches_the_declared_license() -> None:
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_classifiers_and_urls() -> None:
    assert any(c.startswith("Programming Language :: Python :: 3") for c in PROJECT["classifiers"])
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in PROJECT["classifiers"])
    assert {"Homepage", "Source", "Issues"} <= set(PROJECT["urls"])


def test_version_comes_from_the_installed_metadata() -> None:
    import lightning_bninit

    assert lightning_bninit.__version__ == metadata.version("lightning-bninit") == PROJECT["version"]
    proc = _bninit("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"bninit {PROJECT['version']}"


def test_report_help_says_80_percent_power() -> None:
    out = _bninit("report", "--help").stdout
    assert "80% power" in " ".join(out.split()) and "80%%" not in out
