"""Where the receive path's CPU goes, per 512 KiB instance (issue 15; not a test).

    .venv/bin/python bench/engine_profile.py [--instances 300] [--maximum-pdu-size 131072]

docs/benchmarks.md section 9.

One receiving process runs in this process (WORKERS=1 equivalent, storing on tmpfs), DCMTK's storescu sends one
association of generated 512 KiB CT instances, and the association thread's CPU time (``time.thread_time``:
user and system) is split between the receive loop and the C-STORE handler's parts. The CRC64NVME of the data set is
computed inside the receive loop (as it writes the spool file); its cost is measured apart on the same bytes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
from dicom_store_scp import checksum, engine, handlers, server
from dicom_store_scp.config import load


def _timed(owner: Any, name: str, totals: dict[str, float]) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.thread_time() - started

    setattr(owner, name, wrapper)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--maximum-pdu-size", type=int, default=131072)
    options = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dicom-bench-profile-"))
    store = Path(tempfile.mkdtemp(prefix="dicom-bench-profile-", dir="/dev/shm"))
    try:
        paths = harness.write_instances(work / "ct512", options.instances)
        port = harness.free_port()
        arguments = ["--scp-port", str(port), "--storage-dir", str(store), "--workers", "1", "--log-level", "WARNING"]
        config = load([*arguments, "--maximum-pdu-size", str(options.maximum_pdu_size)])
        receiver = server.Receiver(config)
        totals: dict[str, float] = {}
        _timed(engine.DataPhase, "run", totals)
        _timed(handlers, "handle_store", totals)
        _timed(handlers.header_walker, "read_elements", totals)
        _timed(handlers.header_walker, "plain_values", totals)
        _timed(handlers, "_element_text", totals)
        _timed(handlers.validation, "check", totals)
        _timed(receiver.sessions, "store", totals)
        receiver.start()
        housekeeping = threading.Thread(target=receiver.run_until_stopped, daemon=True)
        housekeeping.start()
        harness.send(port, [paths])
        receiver.stop()
        housekeeping.join(30)
        data_set = paths[0].read_bytes()
        started = time.thread_time()
        for _ in range(50):
            checksum.of_bytes(data_set)
        crc = (time.thread_time() - started) / 50
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)
    count = options.instances
    per = {name: seconds / count * 1000 for name, seconds in totals.items()}
    loop = per["run"] - per["handle_store"]
    rows = [
        ("association thread, total", per["run"]),
        ("receive loop (PDUs, spool writes, responses, CRC64NVME)", loop),
        ("  of which CRC64NVME of the instance (measured apart)", crc * 1000),
        ("  the rest: reads, writes, parsing, spool file, responses", loop - crc * 1000),
        ("C-STORE handler (handlers.handle_store)", per["handle_store"]),
        ("  header walk (header.py)", per["read_elements"]),
        ("  element values read (header.plain_values)", per.get("plain_values", 0.0)),
        ("  element values decoded by pydicom (odd values only)", per.get("_element_text", 0.0)),
        ("  AHI element constraints (validation.py)", per["check"]),
        ("  storing (rename, fsync on tmpfs, batch)", per["store"]),
    ]
    print(f"{count} x 512 KiB, MAXIMUM_PDU_SIZE={options.maximum_pdu_size}, CPU ms per instance (thread time)\n")
    print("| part | ms |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
