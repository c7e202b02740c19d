"""Structured JSON log lines, with the one redaction helper (`dynaseal.redaction`) applied to each.

Every secret value the runtime resolved, and anything shaped like a key, bearer credential or
webhook secret, is replaced in the finished line, so a mistake elsewhere (an exception message
quoting a header, a secret in an `extra` field) cannot leak it into the logs.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import orjson

# Re-exported: `redact` was first defined here.
from dynaseal.redaction import redact as redact


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any `extra` fields."""

    _STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as redacted JSON."""
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        try:
            text = orjson.dumps(line, default=str).decode()
        except TypeError:
            # orjson refuses text that is not Unicode (a lone surrogate from a client's JSON escape):
            # the standard encoder writes it escaped, so the line is still written, and still one line.
            text = json.dumps(line, default=str)
        return redact(text)


def setup_logging(service: str, level: str = "INFO") -> None:
    """Send JSON lines to stderr for this process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
