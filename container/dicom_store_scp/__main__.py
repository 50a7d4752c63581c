"""``dicom-store-scp`` / ``python -m dicom_store_scp``: parse the configuration and serve.

``dicom-store-scp status ...`` answers "did these instances reach HealthImaging?" instead (status.py);
``dicom-store-scp preflight ...`` "is this account ready for the stack?" (preflight.py);
``dicom-store-scp redrive ...`` starts again the batches whose import ended without importing (redrive.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import logs, negotiation
from .config import ConfigError, load
from .server import serve
from .workers import supervise, worker_count

# Exit status when the SCP refuses to start (an invalid setting, or a pynetdicom it was not written for).
EXIT_CANNOT_START = 2


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["status"]:
        from . import status

        return status.main(argv[1:])
    if argv[:1] == ["preflight"]:
        from . import preflight

        return preflight.main(argv[1:])
    if argv[:1] == ["redrive"]:
        from . import redrive

        return redrive.main(argv[1:])
    try:
        config = load(argv)
    except ConfigError as error:
        print(f"dicom-store-scp: invalid configuration: {error}", file=sys.stderr)
        return EXIT_CANNOT_START
    problems = negotiation.problems()
    if problems:
        # The receive path is built on these names (negotiation.SEAMS): without one there is no bounded path to run.
        print(f"dicom-store-scp: cannot start: {'; '.join(problems)}", file=sys.stderr)
        return EXIT_CANNOT_START
    logs.configure(config.log_level)
    if worker_count(config) > 1:
        return supervise(config)
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
