"""Signals reach a process twice (a group kill, then the supervisor passing it on; Ctrl-C; docker stop): a handler
that runs again while it is still running must not hang the process (issue 24 item 0)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.scp import launch_scp, sample_file, storescu

# In its own interpreter, so a hang is a timeout here and not a stuck test run. One Receiver per round, stopped by a
# SIGTERM from another thread while the main thread waits in the housekeeping loop, as in a real process. Round N
# delivers SIGTERM again from inside the running handler, at the N-th Python or C call it makes (a profile hook
# counts them): the rounds go on until one makes fewer calls than N, so every point of the handler is covered.
_REENTRY = textwrap.dedent(
    """
    import os, signal, socket, sys, threading
    from dicom_store_scp import logs, server
    from dicom_store_scp.config import load

    logs.configure("INFO")
    storage = sys.argv[1]
    round_number = 0
    while True:
        round_number += 1
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = str(probe.getsockname()[1])
        config = load(["--scp-port", port, "--bind-address", "127.0.0.1", "--storage-dir", storage,
                       "--workers", "1", "--shutdown-grace-seconds", "1"])
        receiver = server.Receiver(config)
        server.install_signal_handlers(receiver)
        receiver.start()
        handler = signal.getsignal(signal.SIGTERM)
        state = {"inside": None, "calls": 0, "delivered": False}

        def profile(frame, event, arg, state=state, handler=handler):
            if state["inside"] is None:
                if event == "call" and frame.f_code is handler.__code__:
                    state["inside"] = frame
                return
            if event == "return" and frame is state["inside"]:
                state["inside"] = False
                return
            if state["inside"] is False:
                return
            state["calls"] += 1
            if state["calls"] == round_number and not state["delivered"]:
                state["delivered"] = True
                signal.raise_signal(signal.SIGTERM)  # handled at once, inside the handler

        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
        sys.setprofile(profile)
        try:
            receiver.run_until_stopped()
        finally:
            sys.setprofile(None)
        print(f"round {round_number}: {state['calls']} calls, delivered again: {state['delivered']}", flush=True)
        if not state["delivered"]:
            break
    print(f"covered {round_number - 1}", flush=True)
    """
)


def test_sigterm_delivered_again_inside_the_handler_at_every_point_does_not_hang(tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-c", _REENTRY, str(tmp_path / "storage")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        last = out.strip().splitlines()[-1:] or ["before the first round ended"]
        pytest.fail(f"the process hung after {last[0]!r}: a handler blocked on a lock it already held\n{err[-2000:]}")
    assert process.returncode == 0, err[-3000:]
    rounds = [line for line in out.splitlines() if line.startswith("round ")]
    covered = int(out.strip().splitlines()[-1].split()[-1])
    assert covered >= 1 and len(rounds) == covered + 1, out
    # Every round stopped the receiver once, however many times the signal came.
    shutdowns = [line for line in err.splitlines() if '"event": "shutdown"' in line]
    assert len(shutdowns) == len(rounds), err[-3000:]


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [int(child) for child in children.read_text().split()] if children.exists() else []
    return found + [grandchild for child in found for grandchild in _descendants(child)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_repeated_signals_to_every_process_of_a_running_scp_stop_it(tmp_path: Path, signum: int) -> None:
    """A stress test of the race: the signal again and again to the supervisor and every worker at once."""
    for attempt in range(3):
        folder = tmp_path / f"{signum}-{attempt}"
        folder.mkdir()
        scp = launch_scp(folder, "--workers", "2", "--shutdown-grace-seconds", "5")
        try:
            workers = {line["pid"] for line in scp.wait_for_event("listening", count=2)}
            assert storescu(scp.port, sample_file("CT_small.dcm")).statuses == [0]
            processes = [scp.process.pid, *_descendants(scp.process.pid)]
            assert workers <= set(processes)
            for _ in range(20):
                for pid in processes:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signum)
            started = time.monotonic()
            code = scp.process.wait(timeout=30)
        finally:
            if scp.process.poll() is None:
                for pid in [scp.process.pid, *_descendants(scp.process.pid)]:
                    os.kill(pid, signal.SIGKILL)
                scp.process.wait()
        assert code == 0, scp.logs()[-10:]
        assert time.monotonic() - started < 15
        assert {line["pid"] for line in scp.events("stopped")} == workers
        assert not [pid for pid in processes if Path(f"/proc/{pid}").exists()]
