"""The SCP's metrics: cheap in-memory counters, written as CloudWatch EMF lines once per interval.

Handlers, the receive loop, the batches and the S3 backend record events here as they happen (a lock and an addition;
no I/O). The housekeeping loop (server.py) calls :meth:`Recorder.flush` when an interval has passed and at
shutdown: one EMF record per worker and interval (plus one per rejection reason and failure family seen), never
one per instance. Names, units and dimensions are dicom_store_contract.metrics'.

Intervals are aligned to the wall clock and each record is stamped with its interval's start, so every worker
adds exactly one reading per interval to a gauge such as ActiveAssociations: its Sum over a period of the same
length is the figure for the whole service.

A person gets the same figures as one summary line per busy interval, and on demand with SIGUSR1.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dicom_store_contract import metrics as names

LOG = logging.getLogger("dicom_store_scp.metrics")
# Metrics are not chatter: they are written whatever LOG_LEVEL says.
LOG.setLevel(logging.INFO)

MIB = 1024 * 1024


def bucket(value: float) -> float:
    """``value`` to two significant digits (at most 5 % off): what the EMF Values array holds."""
    if value <= 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(value)) - 1)
    return round(round(value / step) * step, 12)


@dataclass
class Distribution:
    """Every observation of an interval, as value -> count (EMF's Values and Counts), with exact statistics."""

    counts: dict[float, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf

    def add(self, value: float) -> None:
        key = bucket(value)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.count += 1
        self.total += value
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)

    def percentile(self, fraction: float) -> float:
        """The value below which ``fraction`` of the observations lie (to the bucket's precision)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for value in sorted(self.counts):
            seen += self.counts[value]
            if seen >= rank:
                return value
        return self.maximum

    def emf_values(self) -> Iterator[dict[str, Any]]:
        """EMF value objects of at most EMF_MAX_VALUES values each (one per record)."""
        values = sorted(self.counts)
        size = names.EMF_MAX_VALUES
        for start in range(0, len(values), size):
            part = values[start : start + size]
            counts = [self.counts[value] for value in part]
            whole = len(part) == len(values)
            yield {
                "Values": part,
                "Counts": counts,
                # Exact figures when the distribution fits one record; otherwise each part's own.
                "Max": round(self.maximum, 3) if whole else part[-1],
                "Min": round(self.minimum, 3) if whole else part[0],
                "Count": self.count if whole else sum(counts),
                "Sum": round(self.total, 3)
                if whole
                else round(sum(v * n for v, n in zip(part, counts, strict=True)), 3),
            }


@dataclass
class _Interval:
    counters: dict[str, int] = field(default_factory=dict)
    # (metric name, second dimension's value) -> count
    split: dict[tuple[str, str], int] = field(default_factory=dict)
    distributions: dict[str, Distribution] = field(default_factory=dict)
    active_sum: float = 0.0
    active_samples: int = 0
    active_last: int = 0

    def add(self, metric: names.Metric, amount: int = 1) -> None:
        self.counters[metric.name] = self.counters.get(metric.name, 0) + amount

    def observe(self, metric: names.Metric, value: float) -> None:
        self.distributions.setdefault(metric.name, Distribution()).add(value)

    def active(self) -> float:
        return self.active_sum / self.active_samples if self.active_samples else float(self.active_last)

    def busy(self) -> bool:
        return any(self.counters.values()) or self.active_sum > 0


# What every interval's record holds even when nothing happened: zeros keep graphs and alarms continuous.
_ALWAYS = (
    names.ASSOCIATIONS_ACCEPTED,
    names.ASSOCIATIONS_REJECTED,
    names.PROTOCOL_ABORTS,
    names.INSTANCES_STORED,
    names.STORES_FAILED,
    names.BYTES_RECEIVED,
    names.BATCHES_SEALED,
    names.MANIFESTS_FAILED,
)


class Recorder:
    """One receiving process's metrics. Thread-safe; every ``record`` method is an addition under a lock."""

    def __init__(
        self,
        service: str = "dicom-store-scp",
        interval: float = 60.0,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
        records: bool = True,
    ) -> None:
        """``records``: write the EMF records (for CloudWatch); False leaves a person at a terminal the summaries."""
        self.service = service
        self.interval = interval
        self.enabled = enabled
        self.write_records = records
        self._clock = clock
        self._lock = threading.Lock()
        self._current = _Interval()
        self._since_start = _Interval()
        self._started = clock()
        self._interval_start = self._align(self._started)

    def _align(self, moment: float) -> float:
        return math.floor(moment / self.interval) * self.interval

    # -- recording (called where the events happen) --------------------------------------------------------------

    def _count(self, metric: names.Metric, amount: int = 1, split: str = "") -> None:
        with self._lock:
            for interval in (self._current, self._since_start):
                interval.add(metric, amount)
                if split:
                    key = (metric.name, split)
                    interval.split[key] = interval.split.get(key, 0) + amount

    def association_accepted(self) -> None:
        self._count(names.ASSOCIATIONS_ACCEPTED)

    def association_rejected(self, reason: str) -> None:
        assert reason in names.REJECTION_REASONS, reason
        self._count(names.ASSOCIATIONS_REJECTED, split=reason)

    def protocol_abort(self) -> None:
        self._count(names.PROTOCOL_ABORTS)

    def instance_stored(self, size: int, seconds: float, receive_seconds: float | None = None) -> None:
        """``seconds``: from its data set complete to it durable; ``receive_seconds``: the data set's receiving."""
        with self._lock:
            for interval in (self._current, self._since_start):
                interval.add(names.INSTANCES_STORED)
                interval.add(names.BYTES_RECEIVED, size)
                interval.observe(names.STORE_LATENCY, seconds * 1000)
                if receive_seconds is not None:
                    interval.observe(names.RECEIVE_LATENCY, receive_seconds * 1000)

    def instance_failed(self, family: str) -> None:
        assert family in names.STATUS_FAMILIES, family
        self._count(names.STORES_FAILED, split=family)

    def s3_upload(self, seconds: float) -> None:
        with self._lock:
            for interval in (self._current, self._since_start):
                interval.observe(names.S3_UPLOAD_LATENCY, seconds * 1000)

    def ahi_store(self, seconds: float) -> None:
        """One instance's STOW-RS exchange with HealthImaging (stow.py), retries included."""
        with self._lock:
            for interval in (self._current, self._since_start):
                interval.observe(names.AHI_STORE_LATENCY, seconds * 1000)

    def batch_sealed(self) -> None:
        self._count(names.BATCHES_SEALED)

    def manifest_failed(self) -> None:
        self._count(names.MANIFESTS_FAILED)

    def audit_dropped(self, sink: str, count: int = 1) -> None:
        """Audit messages a sink had no room for (audit/sinks.py logs which sink)."""
        self._count(names.AUDIT_MESSAGES_DROPPED, count)

    def sample_active(self, associations: int) -> None:
        """A reading of the open associations (the housekeeping loop's, a few times a second)."""
        with self._lock:
            interval = self._current
            interval.active_sum += associations
            interval.active_samples += 1
            interval.active_last = associations
            self._since_start.active_last = associations

    # -- writing --------------------------------------------------------------------------------------------------

    def due(self) -> bool:
        return self._clock() >= self._interval_start + self.interval

    def flush(self, spool_bytes: int = 0) -> None:
        """End the interval: write its EMF records and (when anything happened) its summary line."""
        with self._lock:
            interval, self._current = self._current, _Interval()
            self._current.active_last = interval.active_last
            started, self._interval_start = self._interval_start, self._align(self._clock())
        if not self.enabled:
            return
        if self.write_records:
            for record in self.records(interval, started, spool_bytes):
                LOG.info("metrics", extra={"fields": {"event": "metrics", **record}})
        if interval.busy():
            self._log_summary("metrics summary", interval, self._clock() - max(started, self._started))

    def records(self, interval: _Interval, started: float, spool_bytes: int) -> Iterator[dict[str, Any]]:
        timestamp = int(started * 1000)
        values: dict[str, Any] = {metric.name: interval.counters.get(metric.name, 0) for metric in _ALWAYS}
        # Counters outside _ALWAYS (AuditMessagesDropped) appear in the intervals they counted something in.
        values.update({name: count for name, count in interval.counters.items() if name not in values and count})
        values[names.ACTIVE_ASSOCIATIONS.name] = round(interval.active(), 3)
        values[names.SPOOL_BYTES.name] = spool_bytes
        overflow: list[tuple[str, dict[str, Any]]] = []
        for name, distribution in sorted(interval.distributions.items()):
            first, *rest = distribution.emf_values()
            values[name] = first
            overflow.extend((name, part) for part in rest)
        yield self._record(timestamp, {}, values)
        for name, part in overflow:
            yield self._record(timestamp, {}, {name: part})
        for (name, value), count in sorted(interval.split.items()):
            second = names.by_name()[name].by
            yield self._record(timestamp, {second: value}, {name: count})

    def _record(self, timestamp: int, dimensions: dict[str, str], values: dict[str, Any]) -> dict[str, Any]:
        metrics = names.by_name()
        return {
            "_aws": {
                "Timestamp": timestamp,
                "CloudWatchMetrics": [
                    {
                        "Namespace": names.NAMESPACE,
                        "Dimensions": [[names.SERVICE, *dimensions]],
                        "Metrics": [{"Name": name, "Unit": metrics[name].unit} for name in values],
                    }
                ],
            },
            names.SERVICE: self.service,
            **dimensions,
            **values,
        }

    # -- for a person ---------------------------------------------------------------------------------------------

    def log_status(self) -> None:
        """The summary of the interval so far and of everything since start, now (SIGUSR1)."""
        with self._lock:
            interval = self._copy(self._current)
            since = self._copy(self._since_start)
            # The first interval began (on the clock's grid) before this process did: count from the start.
            elapsed = self._clock() - max(self._interval_start, self._started)
            uptime = self._clock() - self._started
        self._log_summary("metrics status", interval, elapsed, since, uptime)

    @staticmethod
    def _copy(interval: _Interval) -> _Interval:
        return _Interval(
            counters=dict(interval.counters),
            split=dict(interval.split),
            distributions={
                name: Distribution(dict(d.counts), d.count, d.total, d.minimum, d.maximum)
                for name, d in interval.distributions.items()
            },
            active_sum=interval.active_sum,
            active_samples=interval.active_samples,
            active_last=interval.active_last,
        )

    def _log_summary(
        self,
        message: str,
        interval: _Interval,
        seconds: float,
        since: _Interval | None = None,
        uptime: float = 0.0,
    ) -> None:
        fields = {"event": "metrics-summary", "seconds": round(seconds, 1), **summary_fields(interval)}
        text = f"last {seconds:.0f} s: {summary_text(interval)}"
        if since is not None:
            fields["sinceStart"] = {"seconds": round(uptime, 1), **summary_fields(since)}
            text += f" | since start ({uptime:.0f} s): {summary_text(since)}"
        LOG.info(f"{message}: {text}", extra={"fields": fields})


def summary_fields(interval: _Interval) -> dict[str, Any]:
    latency = interval.distributions.get(names.STORE_LATENCY.name, Distribution())
    return {
        "stored": interval.counters.get(names.INSTANCES_STORED.name, 0),
        "failed": interval.counters.get(names.STORES_FAILED.name, 0),
        "rejected": interval.counters.get(names.ASSOCIATIONS_REJECTED.name, 0),
        "mib": round(interval.counters.get(names.BYTES_RECEIVED.name, 0) / MIB, 2),
        "p50ms": latency.percentile(0.5),
        "p99ms": latency.percentile(0.99),
        "active": interval.active_last,
    }


def summary_text(interval: _Interval) -> str:
    figures = summary_fields(interval)
    return (
        f"{figures['stored']} stored ({figures['mib']:.2f} MiB), {figures['failed']} failed,"
        f" {figures['rejected']} rejected, store latency p50 {figures['p50ms']:g} ms p99 {figures['p99ms']:g} ms,"
        f" {figures['active']} active"
    )
