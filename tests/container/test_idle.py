"""Idle associations cost (almost) no CPU: a thread blocked in its socket read, not a poll (engine, negotiation)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification
from support.scp import echoscu


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_twenty_idle_associations_leave_the_cpu_idle_and_still_answer(scp):
    caller = AE(ae_title="IDLER")
    caller.add_requested_context(Verification)
    held = [caller.associate("127.0.0.1", scp.port) for _ in range(20)]
    try:
        assert all(assoc.is_established for assoc in held)
        time.sleep(0.5)
        before = _cpu_seconds(scp.process.pid)
        time.sleep(3)
        used = _cpu_seconds(scp.process.pid) - before
        # pynetdicom's own loops spend about 1.8 CPU seconds here (2,000 wake-ups per second per association).
        assert used < 0.3, used
        assert all(assoc.send_c_echo().Status == 0 for assoc in held)
    finally:
        for assoc in held:
            assoc.release()
    assert echoscu(scp.port).returncode == 0
    assert len(scp.wait_for_event("association", count=21)) == 21
