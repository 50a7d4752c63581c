"""C-STORE latency with the audit trail's repository up, down, and without an audit trail (not a test).

    PYTHONPATH=container:tests .venv/bin/python bench/audit_outage.py [--associations 20] [--instances 25]

docs/benchmarks.md section 10 (issue 27): one SCP (WORKERS=1, local store) with AUDIT_SYSLOG_URL pointing at a
syslog-over-TLS receiver on loopback (tests/support/audit.py). Phase "up": the receiver runs; phase "down": it is
stopped and the messages queue on disk; phase "none": an SCP without an audit trail. Each association sends
``--instances`` instances of one new study (so each association's end makes an audit message); the round trip of
every C-STORE (request sent to response read, pynetdicom's SCU) is timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from support.audit import SyslogReceiver
from support.certs import make_pki
from support.scp import launch_scp, sample_file


def send(port: int, associations: int, instances: int) -> list[float]:
    dataset = dcmread(sample_file("CT_small.dcm"))
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    timings = []
    for _ in range(associations):
        dataset.StudyInstanceUID = generate_uid()
        assoc = ae.associate("127.0.0.1", port, ae_title="STORESCP")
        assert assoc.is_established
        for _ in range(instances):
            dataset.SOPInstanceUID = generate_uid()
            started = time.perf_counter()
            status = assoc.send_c_store(dataset)
            timings.append(time.perf_counter() - started)
            assert status.Status == 0, status
        assoc.release()
    return timings


def describe(name: str, timings: list[float]) -> str:
    ordered = sorted(timings)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"| {name} | {len(ordered)} | {statistics.median(ordered) * 1000:.2f} | {p99 * 1000:.2f} "
        f"| {ordered[-1] * 1000:.2f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--associations", type=int, default=20)
    parser.add_argument("--instances", type=int, default=25)
    options = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dicom-bench-audit-") as work:
        folder = Path(work)
        pki = make_pki(folder / "pki")
        receiver = SyslogReceiver(pki.server_cert, pki.server_key, ca=pki.ca_cert)
        receiver.start()
        audited = launch_scp(
            folder, "--audit-syslog-url", f"tls://localhost:{receiver.port}", "--audit-syslog-ca-file",
            str(pki.ca_cert), "--audit-queue-dir", str(folder / "queue"), "--metrics-enabled", "false",
        )  # fmt: skip
        plain = launch_scp(folder, "--metrics-enabled", "false")
        try:
            send(audited.port, 2, 5)  # warm up both
            send(plain.port, 2, 5)
            for _ in range(2):  # two rounds, phases interleaved: this machine's speed drifts over minutes
                rows.append(describe("repository up", send(audited.port, options.associations, options.instances)))
                receiver.stop()
                rows.append(describe("repository down", send(audited.port, options.associations, options.instances)))
                queued = len(list((folder / "queue").rglob("*.msg")))
                receiver.start()
                rows.append(describe("no audit trail", send(plain.port, options.associations, options.instances)))
                rows.append(f"| (messages queued on disk during the outage: {queued}) | | | | |")
        finally:
            audited.stop()
            plain.stop()
            receiver.stop()
    print(f"{options.associations} associations x {options.instances} instances (CT_small, 39 KiB) per phase\n")
    print("| phase | C-STOREs | median ms | p99 ms | max ms |\n|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
