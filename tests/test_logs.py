"""Log lines: a name from an object cannot fake a line of its own in the plain format."""

from __future__ import annotations

import json
import logging

from nftproxy.logs import JsonFormatter, PlainFormatter


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("nftproxy.proxier", logging.ERROR, __file__, 1, message, args, None)


def test_a_name_with_a_line_break_stays_inside_its_entry() -> None:
    fake = "web\n2026-12-04 00:00:00,000 INFO nftproxy: all Services synced"
    text = PlainFormatter().format(record("ignoring invalid object: Service default/%s", fake))
    first, *rest = text.split("\n")
    assert first.endswith("ignoring invalid object: Service default/web")
    assert rest and all(line.startswith("    ") for line in rest), text


def test_control_characters_are_escaped() -> None:
    text = PlainFormatter().format(record("Service %s", "a\x1b[2Jb\rc\x00d\x9b2Je\x85f\u2028g"))
    assert text.endswith("Service a\\x1b[2Jb\\x0dc\\x00d\\x9b2Je\\x85f\\u2028g")
    assert len(text.splitlines()) == 1, "nothing a line reader would break on"


def test_a_traceback_stays_readable_and_inside_its_entry() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = logging.LogRecord("nftproxy", logging.ERROR, __file__, 1, "sync failed", (), sys.exc_info())
    lines = PlainFormatter().format(rec).split("\n")
    assert lines[0].endswith("sync failed") and "ValueError: boom" in lines[-1]
    assert all(line.startswith("    ") for line in lines[1:])


def test_json_lines_carry_the_message_as_it_is() -> None:
    entry = json.loads(JsonFormatter().format(record("Service %s", "a\nb")))
    assert entry["msg"] == "Service a\nb"
