"""JSON log lines with fixed keys, and CloudWatch Embedded Metric Format records.

Configured once, at the worker's entry point. Library modules only call
``logging.getLogger(__name__)`` and pass context through ``extra={"fields": {...}}``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, Final, TextIO

NAMESPACE: Final = "EcsQuery"
# Fixed keys, in this order, whenever the log record has them.
_KEYS: Final = (
    "job",
    "stage",
    "shard",
    "attempt",
    "uri",
    "input_bytes",
    "rows",
    "bytes_out",
    "duration_ms",
    "exit_code",
    "error_type",
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields: Mapping[str, Any] = getattr(record, "fields", {})
        for key in _KEYS:
            if key in fields:
                document[key] = fields[key]
        for key, value in fields.items():
            document.setdefault(key, value)
        if record.exc_info and record.levelno >= logging.ERROR:
            document["traceback"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


def configure(stream: TextIO = sys.stdout, level: int = logging.INFO) -> None:
    """Send every log record of the process to ``stream`` as one JSON line."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def emit_metrics(
    stage: str,
    metrics: Mapping[str, tuple[float, str]],
    properties: Mapping[str, Any],
    stream: TextIO = sys.stdout,
) -> None:
    """Write one EMF record: ``metrics`` maps a name to (value, CloudWatch unit).

    The only dimension is the stage, so metric count stays fixed however many jobs run; the job
    id and shard travel as properties, searchable in Logs Insights.
    """
    record: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [["Stage"]],
                    "Metrics": [
                        {"Name": name, "Unit": unit} for name, (_, unit) in metrics.items()
                    ],
                }
            ],
        },
        "Stage": stage,
    }
    record.update({name: value for name, (value, _) in metrics.items()})
    record.update(properties)
    stream.write(json.dumps(record, default=str) + "\n")
    stream.flush()
