"""Logging set-up: text or JSON lines, each record carrying the request id of the call it belongs
to. Never log image bytes or patient data: only ids, sizes, codes and reasons."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
"""The id of the call the current thread serves; the servicer sets it for each request."""


def escaped(text: str) -> str:
    """`text` as Python's repr writes it, less the quotes: a newline or any other control
    character becomes an escape, so a client's value can never start a forged log line."""
    return repr(text)[1:-1]


class RequestIdFilter(logging.Filter):
    """Stamps every record with the current request id ("" outside a call), escaped: ids are
    checked before they are set, and escaping keeps logs safe should one slip through."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = escaped(request_id_var.get())
        record.request_id = request_id
        # Text lines show "[id]" inside a call only: no empty "[]" on start-up lines.
        record.request_tag = f" [{request_id}]" if request_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", ""),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s %(message)s"


def configure_logging(log_format: str, level: str) -> None:
    """Route the root logger to stderr in `log_format` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
