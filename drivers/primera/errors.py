"""PTBurn job and disc error numbers (JobErrorNumber, DiscErrorNumberX) in clear text.

From Primera's PTBurn SDK (shared/reference/robots.md). The engine's own JobErrorString is
preferred when it gives one; this table is the fallback and the UI's legend.
"""

from __future__ import annotations

ERRORS: dict[int, str] = {
    0: "no error",
    1: "PTBurn engine error",
    2: "job processor error",
    3: "robotics error",
    4: "invalid files in the job",
    5: "too many files",
    6: "no file to burn",
    7: "invalid print (label) file",
    8: "invalid job request (JRQ) file",
    9: "status file corrupt",
    10: "bad media",
    11: "insufficient space on the disc",
    12: "the disc is not blank",
    13: "the drive failed to open or close",
    14: "the drive is not ready",
    15: "the drive is not robotic",
    16: "job aborted",
    17: "DVD structure invalid",
    18: "record (write) error",
    19: "verify error",
    20: "too many rejected discs",
    21: "bad multisession disc",
    22: "client not authorized (no licence)",
    23: "client message error",
    24: "unknown job type",
    25: "a critical key or value in the job is invalid",
    26: "temporary folder over its limit",
    27: "invalid CD-Text",
    28: "print application missing",
    29: "print file missing",
    30: "cartridges wrong for the print file",
    31: "no space for read data",
    32: "read error",
    33: "invalid PVD data",
    34: "the job type cannot take PVD data",
    35: "disc image creation failed",
    36: "unable to get status",
    37: "feature not supported",
    38: "invalid Job ID",
    39: "string too long",
    40: "printing exception",
}
ABORTED = 16

# SysErrorNumber ([System] of SystemStatus.txt and each robot's section): they need an operator
# and clear back to 0 once fixed (PTBurn SDK)
SYS_ERRORS: dict[int, str] = {
    0: "no error", 1: "printer tray movement error", 2: "invalid cartridge", 3: "input bin empty: load blank discs",
    4: "internal printer communication error", 5: "colour ink low", 6: "black ink low", 7: "both inks low",
    8: "disc not picked", 9: "arm movement error", 10: "printer cartridge movement / picker error",
    11: "PTBurn lacks administrator rights", 12: "internal software error", 13: "no robotic drives",
    14: "robot offline", 15: "cover open too long: close it", 16: "disc not picked from the printer",
    17: "several discs picked", 18: "disc dropped into the recorder", 19: "disc dropped into the printer",
    20: "disc dropped into the left bin", 21: "disc dropped onto the reject slide",
    22: "printer needs alignment", 23: "invalid colour cartridge", 24: "invalid black cartridge",
    25: "invalid colour and black cartridges", 26: "no cartridges", 27: "cartridges in the wrong holders",
    28: "cartridges in the wrong holders", 29: "cartridges in the wrong holders",
    30: "pigment cartridge not compatible", 31: "alignment print failed", 32: "disc dropped into the printer",
    33: "several discs in the right bin", 34: "several discs in the left bin", 35: "colour cartridge empty",
    36: "black cartridge empty", 37: "both cartridges empty", 38: "printer time-out", 39: "disc dropped",
    40: "disc missing from the printer tray", 41: "disc dropped into the right bin",
    42: "robot response time-out",
}
SYS_INPUT_EMPTY = 3
SYS_INK_LOW = (5, 6, 7)
SYS_OFFLINE = 14
SYS_COVER_OPEN = 15


def describe_system(number: int | None, engine_text: str = "") -> str:
    """Clear text for a SysErrorNumber ('' for none), with the engine's own words when given."""
    if not number:
        return ""
    base = SYS_ERRORS.get(number, "PTBurn system error")
    engine_text = engine_text.strip()
    if engine_text and engine_text.lower() != base.lower():
        return f"{engine_text} ({base}, system error {number})"
    return f"{base} (system error {number})"


def describe(number: int | None, engine_text: str = "") -> str:
    """Clear text for an error number, with the engine's own words when it gave some."""
    if number is None or number == 0:
        return engine_text.strip()
    base = ERRORS.get(number, f"PTBurn error {number}")
    engine_text = engine_text.strip()
    if engine_text and engine_text.lower() != base.lower():
        return f"{engine_text} ({base}, error {number})"
    return f"{base} (error {number})"
