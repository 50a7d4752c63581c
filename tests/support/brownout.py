"""An S3 brown-out on loopback: a fault-injecting HTTP proxy in front of moto_server, and senders that keep sending.

``BrownoutProxy`` forwards every request to moto_server; while its schedule says so it holds each upload (PutObject,
UploadPart) for a random 2-5 s before passing it on, or answers a share of them ``503 SlowDown`` at once, as S3 does
when a prefix is asked for more than it serves. Other requests (reads, listings) pass untouched. A request is
forwarded whole or refused whole, so "stored" and "answered success" stay comparable. ``delay`` adds the same
seconds to every request, whatever the phase (a round trip to the region: bench/stow_modes.py); ``requests`` counts
them by method.

``keep_sending`` runs DCMTK storescu senders in a loop, a few instances per association, re-queueing what was
refused (a sender retries later), and timestamps every response as storescu prints it.

Used by tests/container/test_s3_brownout.py (short phases), bench/s3_brownout.py (20 s phases) and
bench/stow_modes.py (one healthy phase, a delay per request).
"""

from __future__ import annotations

import http.client
import random
import re
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .scp import DCMTK_ENV

HEALTHY, SLOW, SLOWDOWN = "healthy", "slow", "slowdown"

_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass(frozen=True)
class Phase:
    name: str  # shown in results: before, slow, slowdown, after
    seconds: float
    fault: str = HEALTHY


class BrownoutProxy:
    """``phases`` run one after the other from ``start()``; the last one lasts until ``close()``."""

    def __init__(
        self,
        upstream_port: int,
        phases: list[Phase],
        latency: tuple[float, float] = (2.0, 5.0),
        slowdown_share: float = 0.5,
        seed: int = 26,
        delay: float = 0.0,
    ) -> None:
        self.upstream_port = upstream_port
        # Seconds every request waits, after it arrived whole and before it is forwarded or refused.
        self.delay = delay
        self.phases = phases
        self.latency = latency
        self.slowdown_share = slowdown_share
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.started_at: float | None = None
        # Per phase: uploads forwarded, uploads refused with SlowDown; per object path, the SlowDowns it got.
        self.forwarded: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.refused_paths: Counter[str] = Counter()
        # Every request received, by method (PUT, GET, POST, ...).
        self.requests: Counter[str] = Counter()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def start(self) -> float:
        self.started_at = time.monotonic()
        return self.started_at

    def phase_at(self, moment: float) -> Phase:
        """The phase in force at ``moment`` (time.monotonic()); before start(), the first."""
        elapsed = 0.0 if self.started_at is None else moment - self.started_at
        for phase in self.phases:
            if elapsed < phase.seconds:
                return phase
            elapsed -= phase.seconds
        return self.phases[-1]

    def boundaries(self) -> list[tuple[Phase, float, float]]:
        """(phase, start, end) in time.monotonic() terms; the last phase ends at infinity."""
        assert self.started_at is not None
        spans, at = [], self.started_at
        for index, phase in enumerate(self.phases):
            end = float("inf") if index == len(self.phases) - 1 else at + phase.seconds
            spans.append((phase, at, end))
            at = end
        return spans

    @property
    def duration(self) -> float:
        return sum(phase.seconds for phase in self.phases)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _decide(self, upload: bool) -> tuple[str, float]:
        """("forward", delay) or ("refuse", 0) for one request, by the phase in force."""
        phase = self.phase_at(time.monotonic())
        if not upload or phase.fault == HEALTHY:
            return "forward", 0.0
        with self._lock:
            if phase.fault == SLOW:
                return "forward", self._random.uniform(*self.latency)
            if self._random.random() < self.slowdown_share:
                return "refuse", 0.0
        return "forward", 0.0

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], payload: bytes) -> None:
                self.send_response(status, reason)
                for name, value in headers:
                    if name.lower() not in {"content-length", "transfer-encoding", "connection", "server", "date"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = urlsplit(self.path).path
                upload = self.command == "PUT" and path.count("/") >= 2  # an object, not a bucket
                with proxy._lock:
                    proxy.requests[self.command] += 1
                if proxy.delay:
                    time.sleep(proxy.delay)
                action, delay = proxy._decide(upload)
                phase = proxy.phase_at(time.monotonic()).name
                if upload:
                    with proxy._lock:
                        (proxy.refused if action == "refuse" else proxy.forwarded)[phase] += 1
                        if action == "refuse":
                            proxy.refused_paths[path] += 1
                if action == "refuse":
                    self._answer(503, "Slow Down", [("Content-Type", "application/xml")], _SLOWDOWN)
                    return
                if delay:
                    time.sleep(delay)
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    payload = answer.read()
                finally:
                    upstream.close()
                self._answer(answer.status, answer.reason, answer.getheaders(), payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        return Handler


# -- senders ----------------------------------------------------------------------------------------------------------

_SENDING = re.compile(r"Sending file: (\S+)")
_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")


@dataclass
class Answer:
    path: Path
    status: int
    at: float  # time.monotonic() when storescu printed the response
    sender: int
    sent: float  # time.monotonic() when storescu said it was sending the file


@dataclass
class SenderLog:
    answers: list[Answer] = field(default_factory=list)
    # storescu runs that ended without an answer for every file (a DIMSE timeout, an abort): their output tails.
    broken: list[str] = field(default_factory=list)
    associations: int = 0
    # Seconds from sending a file to its answer, the longest seen.
    longest_answer: float = 0.0


def _one_association(
    port: int, files: list[Path], dimse_timeout: int, sender: int, log: SenderLog, lock: threading.Lock
) -> list[Path]:
    """Send ``files`` on one association; return those not answered 0x0000 (to be sent again later)."""
    process = subprocess.Popen(
        ["storescu", "-v", "-d", "-R", "-nh", "-td", str(dimse_timeout), "127.0.0.1", str(port), *map(str, files)],
        env=DCMTK_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert process.stdout is not None
    current: Path | None = None
    sent_at = time.monotonic()
    answered: dict[Path, int] = {}
    tail: list[str] = []
    for line in process.stdout:
        tail = [*tail[-29:], line]
        sending = _SENDING.search(line)
        if sending:
            current, sent_at = Path(sending[1]), time.monotonic()
            continue
        status = _STATUS.search(line)
        if status and current is not None:
            now = time.monotonic()
            answered[current] = int(status[1], 16)
            with lock:
                log.answers.append(Answer(current, int(status[1], 16), now, sender, sent_at))
                log.longest_answer = max(log.longest_answer, now - sent_at)
            current = None
    process.wait(timeout=dimse_timeout * 2 + 30)
    with lock:
        log.associations += 1
        if process.returncode != 0 or len(answered) != len(files):
            log.broken.append(f"storescu exit {process.returncode}: " + "".join(tail))
    return [path for path in files if answered.get(path) != 0]


def keep_sending(
    port: int,
    files_per_sender: list[list[Path]],
    until: float,
    dimse_timeout: int,
    per_association: int = 5,
) -> SenderLog:
    """One thread per sender: associations of ``per_association`` files until ``until`` (time.monotonic()).

    A file answered with a failure goes to the back of its sender's queue, as a sender retries later; once every
    file was sent the sender starts over with the same files (stored again, each time in a new batch).
    """
    log, lock = SenderLog(), threading.Lock()

    def sender(number: int, files: list[Path]) -> None:
        queue = list(files)
        while time.monotonic() < until:
            if not queue:
                queue = list(files)
            batch, queue = queue[:per_association], queue[per_association:]
            queue += _one_association(port, batch, dimse_timeout, number, log, lock)

    threads = [
        threading.Thread(target=sender, args=(number, files), daemon=True)
        for number, files in enumerate(files_per_sender)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, until - time.monotonic()) + dimse_timeout * 2 + 60)
    return log


def rates(log: SenderLog, proxy: BrownoutProxy) -> dict[str, dict[str, float]]:
    """Per phase: instances acknowledged (0x0000), refused (other statuses) and acknowledged per second."""
    result = {}
    last = max((answer.at for answer in log.answers), default=0.0)
    for phase, start, end in proxy.boundaries():
        end = max(start, min(end, last)) if end == float("inf") else end
        inside = [answer for answer in log.answers if start <= answer.at < end or (answer.at == end == last)]
        acknowledged = sum(1 for answer in inside if answer.status == 0)
        seconds = max(end - start, 1e-9)
        result[phase.name] = {
            "seconds": round(seconds, 2),
            "acknowledged": acknowledged,
            "refused": len(inside) - acknowledged,
            "acknowledgedPerSecond": round(acknowledged / seconds, 2) if end > start else 0.0,
        }
    return result
