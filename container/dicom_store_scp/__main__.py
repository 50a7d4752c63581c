"""``dicom-store-scp`` / ``python -m dicom_store_scp``: parse the configuration and serve."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import logs
from .config import ConfigError, load
from .server import serve
from .workers import supervise, worker_count


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load(argv)
    except ConfigError as error:
        print(f"dicom-store-scp: invalid configuration: {error}", file=sys.stderr)
        return 2
    logs.configure(config.log_level)
    if worker_count(config) > 1:
        return supervise(config)
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
