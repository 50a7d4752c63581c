"""``dicom-store-scp`` / ``python -m dicom_store_scp``: parse the configuration and serve."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from . import logs
from .config import ConfigError, load
from .server import Receiver, install_signal_handlers
from .workers import supervise, worker_count

LOG = logging.getLogger("dicom_store_scp")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load(argv)
    except ConfigError as error:
        print(f"dicom-store-scp: invalid configuration: {error}", file=sys.stderr)
        return 2
    logs.configure(config.log_level)
    if worker_count(config) > 1:
        return supervise(config)
    try:
        receiver = Receiver(config)
    except OSError as error:
        # Port in use, storage folder not writable, TLS files unreadable: a start-up failure, not a crash.
        LOG.error("cannot start", extra={"fields": {"event": "start-failed", "error": str(error)}})
        return 1
    install_signal_handlers(receiver)
    receiver.start()
    receiver.run_until_stopped()
    return 0


if __name__ == "__main__":
    sys.exit(main())
