"""One JSON object per log line, so CloudWatch Logs Insights can query peers, AE titles and outcomes."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from . import negotiation

# Connection threads are named after their peer (see handlers.handle_connection_open).
_PEER_THREAD = re.compile(r" peer (?P<peer>\S+)$")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        peer = _PEER_THREAD.search(record.threadName or "")
        if peer:
            line["peer"] = peer.group("peer")
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class PeerFaultsAreWarnings(logging.Filter):
    """pynetdicom's state machine logs an A-ASSOCIATE-RQ with an unsupported protocol version at ERROR, after it has
    answered it correctly (A-ASSOCIATE-RJ, rejected-permanent, service-provider ACSE, protocol version not supported).
    A peer's fault is not the SCP's error: such a record is kept, as a WARNING with an event name."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and str(record.msg).startswith("A-ASSOCIATE-RQ: Unsupported protocol"):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.fields = {"event": "association-rejected", "reason": "protocol version not supported"}
        return True


_PEER_FAULTS = PeerFaultsAreWarnings()


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pynetdicom narrates every PDU at INFO; keep its warnings and errors unless we are debugging.
    logging.getLogger("pynetdicom").setLevel("DEBUG" if level.upper() == "DEBUG" else "WARNING")
    fsm = logging.getLogger("pynetdicom.fsm")
    if _PEER_FAULTS not in fsm.filters:
        fsm.addFilter(_PEER_FAULTS)
    negotiation.narrate_events(level.upper() == "DEBUG")
    # botocore logs credentials-resolution details at DEBUG only; never lower it below WARNING here.
    logging.getLogger("botocore").setLevel("WARNING")
