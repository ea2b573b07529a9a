"""The virtual front-panel LCD: a pseudo-terminal that decodes Matrix Orbital commands.

The station's panel process opens the pty's slave side as if it were the USB serial display
(its path is announced in `ROOT/devices/lcd.json` with Matrix Orbital USB ids); we read the master
side, decode the same command set a real LK204 understands into a 20x4 screen, and write the
screen to `ROOT/lcd-screen.txt` (four lines of 20 characters, replaced atomically) for tests.

Decoded: 0xFE prefix + clear 0x58, home 0x48, set cursor 0x47 col row (1-based), backlight on
0x42 minutes, backlight off 0x46; a few more known commands are skipped with their arguments;
CR/LF/BS move the cursor; printable ASCII is drawn at the cursor, wrapping to the next row.
Runs as a simulator component (`tick`/`close`) or alone: `python -m burnstation_sim.lcd --root R`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import tty
from pathlib import Path

from . import files

COLS, ROWS = 20, 4
PREFIX = 0xFE
VENDOR_ID = "1b3d"   # Matrix Orbital
PRODUCT_ID = "0100"  # first of its FTDI-based range
# command byte -> number of argument bytes (commands we do not act on are skipped cleanly)
ARGS = {
    0x58: 0, 0x48: 0, 0x47: 2, 0x42: 1, 0x46: 0,  # clear, home, cursor, backlight on/off
    0x4A: 0, 0x4B: 0, 0x53: 0, 0x54: 0,            # underline / block cursor on/off
    0x4C: 0, 0x4D: 0, 0x43: 0, 0x44: 0, 0x51: 0, 0x52: 0,  # cursor left/right, wrap, scroll
    0x50: 1, 0x99: 1, 0x91: 1, 0x98: 1,            # contrast, brightness (+ saved variants)
}


class Screen:
    """The display's memory and the command decoder (fed byte by byte, any chunking)."""

    def __init__(self) -> None:
        self.cells = [[" "] * COLS for _ in range(ROWS)]
        self.col = self.row = 0
        self.backlight = True
        self._pending: list[int] | None = None  # bytes after 0xFE of a command in progress

    def lines(self) -> list[str]:
        return ["".join(row) for row in self.cells]

    def feed(self, data: bytes) -> None:
        for byte in data:
            if self._pending is not None:
                self._pending.append(byte)
                code = self._pending[0]
                if len(self._pending) - 1 >= ARGS.get(code, 0):
                    self._run(code, self._pending[1:])
                    self._pending = None
            elif byte == PREFIX:
                self._pending = []
            else:
                self._char(byte)

    def _run(self, code: int, args: list[int]) -> None:
        if code == 0x58:
            self.cells = [[" "] * COLS for _ in range(ROWS)]
            self.col = self.row = 0
        elif code == 0x48:
            self.col = self.row = 0
        elif code == 0x47:
            col, row = args
            if 1 <= col <= COLS and 1 <= row <= ROWS:
                self.col, self.row = col - 1, row - 1
        elif code == 0x42:
            self.backlight = True
        elif code == 0x46:
            self.backlight = False
        elif code == 0x4C:
            self.col = max(0, self.col - 1)
        elif code == 0x4D:
            self._advance()

    def _advance(self) -> None:
        self.col += 1
        if self.col >= COLS:
            self.col = 0
            self.row = (self.row + 1) % ROWS

    def _char(self, byte: int) -> None:
        if byte == 0x0D:
            self.col = 0
        elif byte == 0x0A:
            self.row = (self.row + 1) % ROWS
        elif byte == 0x08:
            self.col = max(0, self.col - 1)
        elif 32 <= byte < 127:
            self.cells[self.row][self.col] = chr(byte)
            self._advance()


class VirtualLCD:
    """A pty plus a Screen; `tick()` drains what the panel wrote and saves the screen."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.screen = Screen()
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # bytes pass unchanged (no CR/LF translation, no echo)
        os.set_blocking(self.master, False)
        self.device = os.ttyname(self.slave)
        self.screen_path = self.root / "lcd-screen.txt"
        self.announce_path = self.root / "devices" / "lcd.json"
        self._written: str | None = None
        self._save()
        doc = {"kind": "lcd", "name": "lcd", "vendor_id": VENDOR_ID, "product_id": PRODUCT_ID,
               "vendor": "Matrix Orbital", "model": "LK204-25-USB (simulated)", "serial": "SIM-LCD",
               "device": self.device}
        files.write_atomic(self.announce_path, (json.dumps(doc, indent=1) + "\n").encode())

    def _save(self) -> None:
        text = "\n".join(self.screen.lines()) + "\n"
        if text != self._written:
            files.write_atomic(self.screen_path, text.encode())
            self._written = text

    def tick(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            self.screen.feed(data)
        self._save()

    def close(self) -> None:
        self.announce_path.unlink(missing_ok=True)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m burnstation_sim.lcd", description="virtual LCD alone")
    parser.add_argument("--root", required=True, type=Path)
    args = parser.parse_args(argv)
    lcd = VirtualLCD(args.root)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"virtual LCD on {lcd.device}; screen in {lcd.screen_path}", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.05):
            lcd.tick()
    finally:
        lcd.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
