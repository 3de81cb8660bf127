"""Logging set-up: plain lines for people, JSON lines for log pipelines (--log-format)."""

from __future__ import annotations

import json
import logging
import sys
import time

# control characters a terminal or a line-based log reader would act on, written as escapes instead:
# C0 and C1 (a terminal's CSI, NEL), DEL, and the Unicode line and paragraph separators (str.splitlines
# breaks on those too)
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A)}
_CONTROL |= {0x2028: "\\u2028", 0x2029: "\\u2029"}
CONTINUATION = "\n    "  # how a message's second and later lines start


def plain_text(text: str) -> str:
    """Text as the plain format writes it: control characters escaped, later lines indented."""
    return text.translate(_CONTROL).replace("\n", CONTINUATION)


class PlainFormatter(logging.Formatter):
    """One record, one entry a reader can trust: every line after the first is indented, so a name
    holding a line break cannot fake a log line of its own, and control characters are escaped.
    Multi-line messages (nft's own errors, tracebacks) stay readable."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return plain_text(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(fmt: str = "plain", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
