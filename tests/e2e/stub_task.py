"""A stand-in container for testing the harness itself, not the worker.

It prints its environment as one JSON line, answers SIGTERM with exit code 75 and logs
"stage started" as the worker does, sleeps ``STUB_SLEEP`` seconds and exits with ``STUB_EXIT``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from types import FrameType


def main() -> int:
    def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
        print("stub: SIGTERM", flush=True)
        sys.exit(75)

    signal.signal(signal.SIGTERM, on_sigterm)
    print(json.dumps({"argv": sys.argv[1:], "environment": dict(os.environ)}), flush=True)
    print(json.dumps({"level": "INFO", "message": "stage started"}), flush=True)
    time.sleep(float(os.environ.get("STUB_SLEEP", "0")))
    return int(os.environ.get("STUB_EXIT", "0"))


if __name__ == "__main__":
    sys.exit(main())
