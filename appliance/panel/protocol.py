"""The Matrix Orbital LCD command set (LK/GLK series), the one command family the panel speaks.

Commands are a 0xFE prefix byte and a command byte, some with argument bytes:
clear screen 0x58, cursor home 0x48, set cursor position 0x47 <col> <row> (1-based),
backlight on 0x42 <minutes> (0 = stay on), backlight off 0x46. Everything else is text, shown at
the cursor. Text sent here is plain printable ASCII: anything else (including 0xFE, which would
start a command) is replaced, so a patient name can never turn into a command.
"""

from __future__ import annotations

PREFIX = 0xFE
CLEAR = 0x58
HOME = 0x48
SET_CURSOR = 0x47
BACKLIGHT_ON = 0x42
BACKLIGHT_OFF = 0x46

COLS = 20
ROWS = 4


def command(code: int, *args: int) -> bytes:
    return bytes([PREFIX, code, *args])


def clear() -> bytes:
    return command(CLEAR)


def home() -> bytes:
    return command(HOME)


def goto(col: int, row: int) -> bytes:
    """Cursor to column `col`, row `row`, both 1-based as the command set counts."""
    if not (1 <= col <= COLS and 1 <= row <= ROWS):
        raise ValueError(f"cursor position {col},{row} outside {COLS}x{ROWS}")
    return command(SET_CURSOR, col, row)


def backlight(on: bool, minutes: int = 0) -> bytes:
    return command(BACKLIGHT_ON, max(0, min(minutes, 255))) if on else command(BACKLIGHT_OFF)


def text(value: str) -> bytes:
    """Printable ASCII only; other characters become '?'."""
    return bytes(ord(c) if 32 <= ord(c) < 127 else ord("?") for c in value)


def fit(value: str, width: int = COLS) -> str:
    value = "".join(c if 32 <= ord(c) < 127 else "?" for c in value)
    return value[:width].ljust(width)


def frame(lines: list[str]) -> bytes:
    """A whole screen: each row written in full at its position (no clear, so no flicker)."""
    rows = (list(lines) + [""] * ROWS)[:ROWS]
    return b"".join(goto(1, i + 1) + text(fit(line)) for i, line in enumerate(rows))
