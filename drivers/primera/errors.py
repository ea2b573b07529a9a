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
    22: "client not authorized",
}
ABORTED = 16


def describe(number: int | None, engine_text: str = "") -> str:
    """Clear text for an error number, with the engine's own words when it gave some."""
    if number is None or number == 0:
        return engine_text.strip()
    base = ERRORS.get(number, f"PTBurn error {number}")
    engine_text = engine_text.strip()
    if engine_text and engine_text.lower() != base.lower():
        return f"{engine_text} ({base}, error {number})"
    return f"{base} (error {number})"
