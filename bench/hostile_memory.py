"""Peak memory of one receiving process while every association slot holds the largest PDU it may (issue 9).

docs/benchmarks.md section 6 (`bench/run.py --only hostile-memory` runs it too).

    .venv/bin/python bench/hostile_memory.py [--associations 300] [--maximum-pdu-size 262144]

Not a test: a measurement for docs/conformance.md 2.3 and docs/benchmarks.md. One SCP process (WORKERS=1) on
loopback; raw peers (tests/support/wire.py) fill every association slot and then:

1. ``half-pdus``: each sends a C-STORE-RQ and the first half of a P-DATA-TF of MAXIMUM_PDU_SIZE + 6 bytes, and
   stops: every association holds a full-size PDU buffer.
2. ``whole-pdus``: each sends the rest at once: all PDUs are decoded, and written to their spool files, together.
3. ``4-gib-headers``: as many new connections each send a P-DATA-TF header declaring 0xFFFFFFFF bytes.

After each phase: the process's resident memory now (VmRSS) and its peak so far (VmHWM), threads, descriptors.
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from pathlib import Path

from harness import free_port, scp_command, scp_env, serving, vitals
from support import wire
from support.wire import RawPeer


def _row(phase: str, pid: int, connections: int) -> str:
    values = vitals(pid)
    return (
        f"| {phase} | {connections} | {values['VmRSS'] / 1024:.0f} | {values['VmHWM'] / 1024:.0f} | "
        f"{values['Threads']} | {values['fds']} |"
    )


def _settle(seconds: float = 2.0) -> None:
    time.sleep(seconds)  # let the SCP's threads read what was sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--associations", type=int, default=300)
    parser.add_argument("--maximum-pdu-size", type=int, default=262144)
    options = parser.parse_args(argv)
    count, pdu_size = options.associations, options.maximum_pdu_size

    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        command = scp_command(
            port,
            Path(scratch) / "storage",
            "--maximum-associations",
            str(count),
            "--maximum-pdu-size",
            str(pdu_size),
            "--acse-timeout",
            "300",
            "--network-timeout",
            "300",
        )
        with serving(command, port, scp_env(1)) as process:
            pid = process.pid
            print(f"SCP pid {pid}, MAXIMUM_PDU_SIZE {pdu_size}, {count} associations")
            print("| phase | connections | VmRSS MiB | VmHWM MiB | threads | descriptors |")
            print("|---|---|---|---|---|---|")
            print(_row("idle", pid, 0))

            peers = []
            for number in range(count):
                peer = RawPeer(port)
                answer = peer.associate()
                assert answer is not None and answer.pdu_type == wire.ASSOCIATE_AC, (number, answer)
                peers.append(peer)
            _settle()
            print(_row("associated", pid, count))

            # One PDV filling the PDU: PDU length = 4 (PDV length) + 2 (headers) + fragment = MAXIMUM_PDU_SIZE + 6.
            fragment = bytes(pdu_size)
            command_pdu = wire.p_data(
                wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, wire.store_command("1.2.3.4"))
            )
            data_pdu = wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, fragment))
            assert len(data_pdu) == 6 + pdu_size + 6
            half = len(data_pdu) // 2
            for peer in peers:
                peer.send(command_pdu + data_pdu[:half])
            _settle()
            print(_row("half-pdus", pid, count))

            for peer in peers:
                peer.send(data_pdu[half:])
            _settle()
            print(_row("whole-pdus", pid, count))

            for peer in peers:
                peer.sock.close()
            _settle()
            print(_row("closed", pid, 0))

            attackers = []
            for _ in range(count):
                attacker = RawPeer(port)
                attacker.send(struct.pack(">BBL", wire.P_DATA, 0, 0xFFFFFFFF) + bytes(10))
                attackers.append(attacker)
            aborted = sum(1 for attacker in attackers if (answer := attacker.receive(30)) and answer.pdu_type == 7)
            for attacker in attackers:
                attacker.sock.close()
            _settle()
            print(_row("4-gib-headers", pid, count) + f" ({aborted} A-ABORTs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
