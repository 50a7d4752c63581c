"""``dicom-store-scp status ... --json`` as an operator runs it: its own process, the stack's instance table on
moto_server, fake credentials, nothing of this process's environment but PYTHONPATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from .aws import FAKE_CREDENTIALS


def status_json(endpoint: str, instance_table: str, *lookup: str) -> tuple[int, dict[str, Any]]:
    """The exit code (0 found, 1 not found) and the JSON answer; anything else fails the calling test."""
    completed = subprocess.run(
        [sys.executable, "-m", "dicom_store_scp", "status", *lookup, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            **FAKE_CREDENTIALS,
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "INSTANCE_TABLE_NAME": instance_table,
            "AWS_ENDPOINT_URL": endpoint,
        },
    )
    assert completed.returncode in (0, 1), completed.stderr
    return completed.returncode, json.loads(completed.stdout)
