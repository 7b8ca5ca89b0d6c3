"""One line per event, key=value, to stderr.

    log = event_logger("walservice")
    log.info("append", tenant=t, timeline=tl, lsn=end_lsn, records=3)
    -> ts=2026-11-22T22:41:07.123Z level=info component=walservice event=append tenant=... lsn=...

Values with spaces, quotes, `=` or anything unprintable are
quoted, and inside the quotes every control character is escaped (`\\n`,
`\\x00`, `\\x1b`, ...): an id or name from a request can never split a line or
forge a field. Tests read these lines, and fail on an unexpected `level=error`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any


# Written as themselves, escaped: backslash, quote, and the usual control characters.
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str) -> str:
    """One character of a quoted value: the C0/C1 controls (NUL and ESC among
    them), DEL and the Unicode line and paragraph separators as \\xNN / \\uNNNN,
    so a value can neither break a line nor drive a terminal."""
    if c in _ESCAPES:
        return _ESCAPES[c]
    code = ord(c)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"\\x{code:02x}"
    if c in "\u2028\u2029":
        return f"\\u{code:04x}"
    return c


def _fmt_value(value: Any) -> str:
    text = str(value)
    if text == "" or not text.isprintable() or any(c in text for c in ' "='):
        return '"' + "".join(map(_escape_char, text)) + '"'
    return text


def format_event(level: str, component: str, event: str, fields: dict[str, Any]) -> str:
    now = time.time()
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    parts = [f"ts={ts}", f"level={level}", f"component={component}", f"event={event}"]
    parts.extend(f"{k}={_fmt_value(v)}" for k, v in fields.items() if v is not None)
    return " ".join(parts)


class EventLogger:
    def __init__(self, component: str) -> None:
        self.component = component
        self._logger = logging.getLogger(f"strata.{component}")

    def _emit(self, level: int, name: str, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, format_event(name, self.component, event, fields))

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, "warn", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "error", event, fields)


def event_logger(component: str) -> EventLogger:
    return EventLogger(component)


def configure(level: str = "info") -> None:
    """Send strata's event lines to stderr, unadorned (they carry their own ts/level)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("strata")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
