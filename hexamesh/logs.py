"""Log lines that nobody else can write: peers' and clients' text is escaped.

Model names, job ids, addresses and error messages from peers and clients
end up in log messages. One with a newline would forge a log line of its own
(``...\\nINFO hexamesh.agent: ...``), and terminal escapes could rewrite what
an operator sees. :class:`OneLineFormatter` escapes every control character
of the formatted message (a traceback attached by ``exc_info`` is ours and
stays as it is), so each record is one line whatever its arguments were.
:func:`printable` does the same for text shown elsewhere (the CLI's tables).
"""

from __future__ import annotations

import logging

__all__ = ["MAX_LOGGED_TEXT", "OneLineFormatter", "printable"]

MAX_LOGGED_TEXT = 2000  # characters of one formatted message; the rest is cut (a 100 KB name)

# Every C0 and C1 control character, DEL and the Unicode line and paragraph
# separators, to a visible escape; everything else maps to itself.
_ESCAPES = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
}
_ESCAPES |= {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def printable(text: str, limit: int = MAX_LOGGED_TEXT) -> str:
    """``text`` on one line, control characters escaped, at most ``limit`` characters."""
    out = text.translate(_ESCAPES)
    if len(out) > limit:
        out = out[:limit] + f"... ({len(out) - limit} more characters)"
    return out


class OneLineFormatter(logging.Formatter):
    """A formatter whose messages are always one line (see the module doc)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)
