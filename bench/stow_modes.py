"""Per-association throughput of INGEST_MODE=stow against import mode (issue 25), on loopback.

    cd bench && PYTHONPATH=../container:.. ../.venv/bin/python stow_modes.py --instances 300 --delays 0,0.02,0.1 --s3

One DCMTK storescu association sends N synthetic 512x512 CT instances to this SCP: in import mode (local folder:
the C-STORE success means fsync'd) and in stow mode against tests/support/fake_stow.py (in this process) adding
each delay to every StoreDICOM request, as a proxy or the region's round trip would. With ``--s3``, import mode into
S3 (moto_server) too: once straight to moto_server, then, for each delay, through tests/support/brownout.py's proxy
adding the same delay to every S3 request (one row beside each stow row). Besides the rate, the requests the
association made (to the fake, or through the proxy) and the CPU (user + system) the SCP's processes spent over the
send, per acknowledged instance (the fake, the proxy and moto_server are not the SCP's processes: not counted).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import harness
from support.brownout import BrownoutProxy, Phase
from support.fake_stow import FakeStow

# Seconds the SCP is watched doing nothing before the send: its background CPU (the housekeeping loop) per second.
IDLE_SECONDS = 5.0
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}


@dataclass(frozen=True)
class Run:
    seconds: float
    user: float  # CPU seconds of the SCP's processes over the send
    system: float
    idle: float  # CPU seconds a second the same processes spend doing nothing (housekeeping), measured before

    def per_instance_ms(self, count: int, less_idle: bool = False) -> float:
        cpu = self.user + self.system - (self.idle * self.seconds if less_idle else 0.0)
        return cpu / count * 1000


def one_association(files: list[Path], storage: Path, *args: str, **env: str) -> Run:
    port = harness.free_port()
    command = harness.scp_command(port, storage, "--workers", "1", *args)
    with harness.serving(command, port, harness.scp_env(1, **FAKE_AWS, **env)) as process:
        before = harness.cpu_seconds(process.pid)
        time.sleep(IDLE_SECONDS)
        user, system = harness.cpu_split(process.pid)
        idle = (user + system - before) / IDLE_SECONDS
        seconds = harness.send(port, [files])  # every instance answered success, or it raises
        user_after, system_after = harness.cpu_split(process.pid)
    return Run(seconds, user_after - user, system_after - system, idle)


def into_s3(files: list[Path], storage: Path, endpoint: str) -> Run:
    """Import mode into the bench's bucket at ``endpoint`` (moto_server, or the proxy in front of it)."""
    return one_association(
        files, storage, "--dicom-bucket", harness.BUCKET, AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1"
    )


def row(mode: str, added: str, count: int, run: Run, requests: str = "-") -> str:
    return (
        f"| {mode} | {added} | {count} | {run.seconds:.2f} | {count / run.seconds:.1f} | {requests} | {run.user:.2f} |"
        f" {run.system:.2f} | {run.per_instance_ms(count):.1f} | {run.idle * 1000:.0f} |"
        f" {run.per_instance_ms(count, less_idle=True):.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument(
        "--delays",
        default="0.02,0.1",
        help="seconds added to every StoreDICOM (and, with --s3, S3) request, comma list",
    )
    parser.add_argument(
        "--s3", action="store_true", help="import mode into S3 (moto_server): straight, and through the proxy per delay"
    )
    args = parser.parse_args()
    rows = [
        "| mode | added per request | instances | seconds | instances/s | requests | CPU user s | CPU system s |"
        " CPU ms / instance | idle CPU ms/s | CPU ms / instance less idle |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="stow-bench-") as folder, contextlib.ExitStack() as stack:
        files = harness.write_instances(Path(folder) / "in", args.instances)
        run = one_association(files, Path(folder) / "import")
        stored = len(list((Path(folder) / "import" / "incoming").rglob("*.dcm")))
        assert stored == len(files), stored
        rows.append(row("import (local, fsync)", "-", len(files), run))
        if args.s3:
            endpoint, client = stack.enter_context(harness.moto_server())
            run = into_s3(files, Path(folder) / "s3", endpoint)
            stored = harness.empty_bucket(client)
            assert stored == len(files), stored
            rows.append(row("import (S3, moto_server)", "-", len(files), run))
        for delay in (float(d) for d in args.delays.split(",")):
            fake = FakeStow()
            fake.delay = delay
            try:
                run = one_association(
                    files, Path(folder) / f"stow-{delay}", "--ingest-mode", "stow", "--ahi-stow-url", fake.base_url
                )
                assert len(fake.held) == len(files), len(fake.held)
            finally:
                fake.stop()
            rows.append(
                row("stow (fake StoreDICOM)", f"{delay * 1000:.0f} ms", len(files), run, str(len(fake.requests)))
            )
            if args.s3:
                proxy = BrownoutProxy(int(endpoint.rsplit(":", 1)[1]), [Phase("healthy", 1)], delay=delay)
                try:
                    run = into_s3(files, Path(folder) / f"s3-{delay}", proxy.endpoint)
                finally:
                    proxy.close()
                stored = harness.empty_bucket(client)
                assert stored == len(files), stored
                requests = " ".join(f"{method} {count}" for method, count in sorted(proxy.requests.items()))
                rows.append(row("import (S3, moto_server, proxy)", f"{delay * 1000:.0f} ms", len(files), run, requests))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
