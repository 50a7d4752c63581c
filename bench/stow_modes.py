"""Per-association throughput of INGEST_MODE=stow against import mode (issue 25), on loopback.

    PYTHONPATH=container:. .venv/bin/python bench/stow_modes.py --instances 100 --delays 0.02,0.1

One DCMTK storescu association sends N synthetic 512x512 CT instances to this SCP: in import mode (local folder:
the C-STORE success means fsync'd) and in stow mode against tests/support/fake_stow.py (in this process) adding
each delay to every StoreDICOM request, as a proxy or the region's round trip would. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import harness
from support.fake_stow import FakeStow

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}


def one_association(files: list[Path], storage: Path, *args: str) -> float:
    port = harness.free_port()
    command = harness.scp_command(port, storage, "--workers", "1", *args)
    with harness.serving(command, port, harness.scp_env(1, **FAKE_AWS)):
        return harness.send(port, [files])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--delays", default="0.02,0.1", help="seconds the fake adds per request, comma list")
    args = parser.parse_args()
    rows = ["| mode | added per request | instances | seconds | instances/s |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="stow-bench-") as folder:
        files = harness.write_instances(Path(folder) / "in", args.instances)
        seconds = one_association(files, Path(folder) / "import")
        rows.append(f"| import (local, fsync) | - | {len(files)} | {seconds:.2f} | {len(files) / seconds:.1f} |")
        for delay in (float(d) for d in args.delays.split(",")):
            fake = FakeStow()
            fake.delay = delay
            try:
                started = time.monotonic()
                seconds = one_association(
                    files, Path(folder) / f"stow-{delay}", "--ingest-mode", "stow", "--ahi-stow-url", fake.base_url
                )
                assert len(fake.held) == len(files), (len(fake.held), time.monotonic() - started)
            finally:
                fake.stop()
            rows.append(
                f"| stow (fake StoreDICOM) | {delay * 1000:.0f} ms | {len(files)} | {seconds:.2f} |"
                f" {len(files) / seconds:.1f} |"
            )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
