"""Where audit messages go: a local file, a CloudWatch Logs group, the hospital's audit repository (syslog.py).

Every sink has a thread of its own and a bounded queue in memory: the SCP's threads only put a line on the queue
(``offer``, never blocking; a full queue drops the line and counts it), the sink's thread delivers, retrying with
backoff while its destination fails. A C-STORE answer never waits for an audit message.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG = logging.getLogger("dicom_store_scp.audit")

# How many messages a sink holds in memory before it drops new ones (and counts them).
MEMORY_QUEUE_LIMIT = 10_000
# Retry backoff while a destination fails: doubling from the first to the last, with jitter.
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_LAST_SECONDS = 30.0
# A drop is logged at once, then at most once a minute with the count since.
_DROP_REPORT_SECONDS = 60.0


class Sink:
    """A destination with its own delivery thread. Subclasses implement :meth:`deliver`."""

    name = "sink"

    def __init__(self, on_drop: Callable[[str, int], None] | None = None, limit: int = MEMORY_QUEUE_LIMIT) -> None:
        self._lines: collections.deque[tuple[float, str]] = collections.deque()
        self._limit = limit
        self._ready = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"audit-{self.name}", daemon=True)
        self._on_drop = on_drop
        self.dropped = 0
        self._dropped_unreported = 0
        self._drop_reported_at = 0.0
        self.delivered = 0

    def start(self) -> None:
        self._thread.start()

    def offer(self, line: str) -> None:
        """Queue one message (never blocks): dropped, and counted, when the queue is full."""
        with self._ready:
            if len(self._lines) >= self._limit:
                self._dropped(1)
                return
            self._lines.append((time.time(), line))
            self._ready.notify()

    def _dropped(self, count: int) -> None:
        self.dropped += count
        self._dropped_unreported += count
        if self._on_drop is not None:
            self._on_drop(self.name, count)
        now = time.monotonic()
        if now - self._drop_reported_at >= _DROP_REPORT_SECONDS:
            self._drop_reported_at = now
            unreported, self._dropped_unreported = self._dropped_unreported, 0
            LOG.error(
                "audit messages dropped",
                extra={
                    "fields": {
                        "event": "audit-dropped",
                        "sink": self.name,
                        "dropped": unreported,
                        "droppedTotal": self.dropped,
                        "reason": "the queue is full while its destination is unreachable",
                    }
                },
            )

    def stop(self, timeout: float) -> None:
        """Deliver what is queued for at most ``timeout`` seconds, then stop the thread."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _take(self, most: int) -> list[tuple[float, str]]:
        with self._ready:
            while not self._lines and not self._stopping:
                self._ready.wait(1.0)
            return [self._lines.popleft() for _ in range(min(most, len(self._lines)))]

    def _run(self) -> None:
        failures = 0
        batch: list[tuple[float, str]] = []
        while True:
            if not batch:
                batch = self._take(self.batch_size())
                if not batch:
                    if self._stopping:
                        self.close()
                        return
                    continue
            before = len(batch)
            try:
                self.deliver(batch)
            except Exception as error:
                self.delivered += before - len(batch)
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    LOG.warning(
                        "audit destination failing; retrying",
                        extra={"fields": {"event": "audit-retry", "sink": self.name, "error": str(error)}},
                    )
                if self._stopping:
                    self.close()
                    return
                self._pause(failures)
                continue
            failures = 0
            self.delivered += before - len(batch)
            batch = []

    def _pause(self, failures: int) -> None:
        wait = min(BACKOFF_LAST_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** min(failures - 1, 10))
        with self._ready:
            self._ready.wait(wait * random.uniform(0.5, 1.0))  # noqa: S311 (jitter, not a secret)

    def batch_size(self) -> int:
        return 100

    def deliver(self, batch: list[tuple[float, str]]) -> None:
        """Deliver the batch's messages in order, removing each delivered one from ``batch``; raise on failure (what
        is left is delivered again, after a pause)."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class FileSink(Sink):
    """``AUDIT_FILE``: one XML AuditMessage per line, appended (and flushed to disk) as they come."""

    name = "file"

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Opened at start-up, so a path that cannot be written stops the SCP before it accepts anything.
        self._file = path.open("a", encoding="utf-8")

    def deliver(self, batch: list[tuple[float, str]]) -> None:
        self._file.write("".join(line + "\n" for _, line in batch))
        self._file.flush()
        os.fsync(self._file.fileno())
        batch.clear()

    def close(self) -> None:
        self._file.close()


# PutLogEvents: at most 10,000 events and 1,048,576 bytes per call, each event counted with 26 bytes more.
_EVENTS_PER_CALL = 10_000
_BYTES_PER_CALL = 1_048_576
_EVENT_OVERHEAD = 26


class LogGroupSink(Sink):
    """``AUDIT_LOG_GROUP``: one CloudWatch Logs event per message, in a stream of this process's own.

    The task's log driver sends standard error to the operational log group; the audit group is written here,
    with the task role's permission on that group alone (template_gen). Throttling and outages are retried with
    backoff; the queue is bounded in memory (the log group is the AWS-side copy; the syslog queue is the one on disk).
    """

    name = "log-group"

    def __init__(self, group: str, stream: str = "", client: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group = group
        self.stream = stream or f"{socket.gethostname()}/{os.getpid()}/{int(time.time())}"
        self._client = client
        self._stream_ready = False

    def client(self) -> Any:
        if self._client is None:
            import boto3  # only with a log group configured
            import botocore.config

            # Our own retries (with backoff, forever); botocore's standard mode retries throttling a few times first.
            config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5)
            self._client = boto3.session.Session().client("logs", config=config)
        return self._client

    def batch_size(self) -> int:
        return _EVENTS_PER_CALL

    def deliver(self, batch: list[tuple[float, str]]) -> None:
        client = self.client()
        if not self._stream_ready:
            with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
                client.create_log_stream(logGroupName=self.group, logStreamName=self.stream)
            self._stream_ready = True
        while batch:
            size, end = 0, 0
            while end < len(batch) and size + len(batch[end][1].encode()) + _EVENT_OVERHEAD <= _BYTES_PER_CALL:
                size += len(batch[end][1].encode()) + _EVENT_OVERHEAD
                end += 1
            end = max(end, 1)
            events = [{"timestamp": int(moment * 1000), "message": line} for moment, line in batch[:end]]
            client.put_log_events(logGroupName=self.group, logStreamName=self.stream, logEvents=events)
            # What was sent is not sent again if a later call of this batch fails.
            del batch[:end]
