"""The demo's output: colour and Unicode only where the terminal takes them, wrapped to its width."""

from __future__ import annotations

import os
import shutil
import textwrap
from collections.abc import Callable
from typing import TextIO


class Terminal:
    """Prints the show: colour and Unicode only where the terminal takes them; never fails on a closed pipe."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        isatty = getattr(stream, "isatty", lambda: False)()
        self.color = bool(isatty) and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        utf8 = "utf" in (getattr(stream, "encoding", "") or "").lower()
        self.bar = "█" if utf8 else "#"
        self.tick = "✓" if utf8 else "OK"
        self.cross = "✗" if utf8 else "FAIL"
        self.arrow = "→" if utf8 else "->"
        self.dash = "—" if utf8 else "-"
        self.broken = False

    def say(self, text: str = "") -> None:
        if self.broken:
            return
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (BrokenPipeError, OSError):
            self.broken = True  # e.g. `nftproxy demo | head`: keep going (and cleaning up) silently

    def wrap(self, text: str, indent: int, mark: str = "", color: Callable[[str], str] | None = None) -> str:
        """`text` wrapped to the terminal width, indented; an optional (coloured) `mark` starts the first line."""
        width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))
        lead = " " * indent
        hang = lead + " " * (len(mark) + 1 if mark else 0)
        lines = textwrap.wrap(text, width=width, initial_indent=hang, subsequent_indent=hang,
                              break_on_hyphens=False, break_long_words=False)
        if mark and lines:
            lines[0] = lead + (color(mark) if color else mark) + " " + lines[0][len(hang):]
        return "\n".join(lines)

    def _sgr(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def bold(self, text: str) -> str:
        return self._sgr("1", text)

    def dim(self, text: str) -> str:
        return self._sgr("2", text)

    def green(self, text: str) -> str:
        return self._sgr("32", text)

    def red(self, text: str) -> str:
        return self._sgr("31", text)

    def cyan(self, text: str) -> str:
        return self._sgr("36", text)

    def step(self, n: int, title: str) -> None:
        self.say()
        self.say(self.bold(f"[{n}/5] {title}"))
