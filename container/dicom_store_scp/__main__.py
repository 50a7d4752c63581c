"""``dicom-store-scp`` / ``python -m dicom_store_scp``: parse the configuration and serve.

``dicom-store-scp status ...`` answers "did these instances reach HealthImaging?" instead (status.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import logs
from .config import ConfigError, load
from .server import serve
from .workers import supervise, worker_count


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["status"]:
        from . import status

        return status.main(argv[1:])
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
