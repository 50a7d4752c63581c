"""Hash-pinned lock files generated from setup.cfg, resolved for the platform each artifact runs on.

pip resolves for another interpreter and platform when told (``--python-version``/``--platform``, which imply
wheels only), so the Lambda's Python 3.12 set is resolved correctly from a build machine with another Python.
``pip install --dry-run --report`` names every distribution it would install with its wheel's sha256.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

from release.project import ROOT, LockTarget

HEADER = """\
# {name}: run-time dependencies, resolved for CPython {python} on {platform}.
# Generated from setup.cfg by `make lock` (python -m release lock); do not edit by hand.
"""


def resolve(target: LockTarget) -> list[dict[str, Any]]:
    """pip's install report for ``target``: one entry per distribution, nothing installed."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--disable-pip-version-check",
            "--quiet",
            "--report",
            "-",
            "--target",
            scratch,
            "--implementation",
            "cp",
            "--python-version",
            target.python_version,
            "--platform",
            target.platform,
            "--only-binary=:all:",
            *target.requirements,
        ]
        report = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return list(json.loads(report)["install"])


def render(target: LockTarget, install: list[dict[str, Any]]) -> str:
    lines = [HEADER.format(name=target.name, python=target.python_version, platform=target.platform)]
    for entry in sorted(install, key=lambda e: canonicalize_name(e["metadata"]["name"])):
        name = canonicalize_name(entry["metadata"]["name"])
        version = entry["metadata"]["version"]
        digest = entry["download_info"]["archive_info"]["hashes"]["sha256"]
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{digest}\n")
    return "".join(lines)


def write(target: LockTarget) -> Path:
    target.path.write_text(render(target, resolve(target)), encoding="utf-8")
    return target.path.relative_to(ROOT)


def pinned(path: Path) -> dict[str, str]:
    """``{name: version}`` of a lock file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, rest = line.partition("==")
            pins[name.strip()] = rest.split()[0]
    return pins
