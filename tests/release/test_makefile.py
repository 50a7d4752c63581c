"""The Makefile's installs: `make run` needs a receiver, not the development toolchain (issue 24 item 8)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _dry_run(tmp_path: Path, target: str, *touch: str) -> str:
    """What ``make <target>`` would run in a fresh checkout (no .venv yet, or one with the ``touch`` stamps)."""
    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for stamp in touch:
        path = tmp_path / ".venv" / stamp
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "bin").mkdir(exist_ok=True)
        (path.parent / "bin" / "python").touch()
        path.touch()
    completed = subprocess.run(
        ["make", "--dry-run", "--no-print-directory", target], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    return completed.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_run_installs_the_runtime_dependencies_only(tmp_path: Path) -> None:
    commands = _dry_run(tmp_path, "run")
    installs = [line for line in commands.splitlines() if " pip install" in line and "--upgrade pip" not in line]
    assert installs and all(line.rstrip().endswith("-e .") for line in installs), commands
    assert "[dev]" not in commands
    assert commands.rstrip().splitlines()[-1] == ".venv/bin/dicom-store-scp"


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_install_adds_the_development_extra_and_then_run_installs_nothing(tmp_path: Path) -> None:
    assert "-e '.[dev]'" in _dry_run(tmp_path, "install")
    # After `make install` (both stamps), `make run` only runs the SCP.
    commands = _dry_run(tmp_path, "run", ".installed-runtime", ".installed")
    assert "pip install" not in commands and commands.strip() == ".venv/bin/dicom-store-scp"


def test_the_runtime_dependencies_are_the_scps_and_the_toolchain_is_in_the_dev_extra() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    runtime = {
        line.split("=")[0].split("<")[0].split(">")[0].strip()
        for line in _requirements(cfg, "options", "install_requires")
    }
    dev = {
        line.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip()
        for line in _requirements(cfg, "options.extras_require", "dev")
    }
    assert runtime == {"pynetdicom", "pydicom", "boto3", "awscrt"}
    assert {"checkov", "cfn-lint", "moto", "mypy", "pytest", "ruff"} <= dev and not runtime & {"checkov", "moto"}


def _requirements(cfg: configparser.ConfigParser, section: str, key: str) -> list[str]:
    return [line for line in cfg[section][key].splitlines() if line.strip() and not line.strip().startswith("#")]
