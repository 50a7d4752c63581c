"""Peak memory of the SCP receiving one large instance in each ingest mode (issue 25), on loopback.

    PYTHONPATH=container:. .venv/bin/python bench/stow_memory.py [--frames 1900]

One DCMTK storescu association sends one synthetic CT instance of ``--frames`` 512 KiB frames (1,900: 0.93 GiB, the
largest stow mode takes: one StoreDICOM request carries at most 1 GB) to a fresh SCP with WORKERS=1, in import mode
into a local folder (fsync'd) and into S3 (moto_server, multipart upload), and in stow mode into
tests/support/fake_stow.py in its streaming mode (in this process; it hashes and drops the body as it arrives, so
it holds none of it either). Peak RSS is VmHWM of the SCP's processes, read before the send (idle) and after it.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import harness
from support.fake_stow import FakeStow

FAKE_AWS = {**harness.FAKE_AWS, "AWS_REGION": "us-east-1"}
# The time budget of one STOW-RS exchange is half the DIMSE timeout: a large instance on shared cores needs room.
DIMSE_TIMEOUT = "600"


def measure(storage: Path, path: Path, *args: str, **env: str) -> tuple[float, float, float]:
    """(seconds, idle RSS MiB, peak RSS MiB) of a fresh SCP receiving ``path`` over one association."""
    port = harness.free_port()
    command = harness.scp_command(port, storage, "--dimse-timeout", DIMSE_TIMEOUT, *args)
    with harness.serving(command, port, harness.scp_env(1, **env)) as process:
        idle = harness.peak_rss_mib(process.pid)
        seconds = harness.send(port, [[path]])
        return seconds, idle, harness.peak_rss_mib(process.pid)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=1900, help="512 KiB frames of the instance (1,900: 0.93 GiB)")
    args = parser.parse_args()
    rows = [
        "| mode | where | instance MiB | seconds | peak RSS MiB | idle RSS MiB |",
        "|---|---|---|---|---|---|",
    ]

    def row(mode: str, where: str, figures: tuple[float, float, float]) -> None:
        seconds, idle, peak = figures
        rows.append(f"| {mode} | {where} | {mib:.2f} | {seconds:.2f} | {peak:.1f} | {idle:.1f} |")

    with tempfile.TemporaryDirectory(prefix="stow-memory-") as folder:
        work = Path(folder)
        [path] = harness.write_instances(work / "in", 1, frames=args.frames)
        mib = path.stat().st_size / harness.MIB

        storage = work / "import"
        row("import", "local folder (fsync)", measure(storage, path))
        if len(list((storage / "incoming").rglob("*.dcm"))) != 1:
            raise RuntimeError("the instance was not stored in the local folder")
        shutil.rmtree(storage)

        with harness.moto_server() as (endpoint, client):
            s3 = {**FAKE_AWS, "AWS_ENDPOINT_URL": endpoint}
            figures = measure(work / "unused", path, "--dicom-bucket", harness.BUCKET, **s3)
            if harness.empty_bucket(client) != 1:
                raise RuntimeError("the instance did not reach S3")
        row("import", "S3 (moto_server, multipart)", figures)

        fake = FakeStow()
        fake.streaming = True
        # Writing the instance held it whole in this process: the high-water mark starts again from here.
        Path("/proc/self/clear_refs").write_text("5")
        try:
            figures = measure(work / "stow", path, "--ingest-mode", "stow", "--ahi-stow-url", fake.base_url, **FAKE_AWS)
        finally:
            fake.stop()
        fake_peak = harness.peak_rss_mib(os.getpid())
        [(size, _)] = fake.digests.values()
        if size < path.stat().st_size - 4096:
            raise RuntimeError(f"the fake stored {size} bytes of {path.stat().st_size}")
        row("stow", "fake StoreDICOM (streaming)", figures)
    print("\n".join(rows))
    # The fake runs in this process: its peak during the stow send says it held none of the instance either.
    print(f"\nthis process's peak RSS during the stow send (the fake StoreDICOM in it): {fake_peak:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
