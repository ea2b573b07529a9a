"""TD Bridge error codes in clear text, for the job's message and the UI.

The codes and the named meanings come from Epson's TD Bridge reference (see
shared/reference/robots.md). JDF codes come in a range per job-file key (JDFkkxx: kk = the key);
where the reference names a code it is spelled out, otherwise the text names the key when the
range is known and says "job file error" when it is not.
"""

from __future__ import annotations

import re

NAMED: dict[str, str] = {
    "SYS001": "TD Bridge could not accept the job",
    "SYS002": "communication error between TD Bridge and the robot",
    "SYS003": "not enough disk space on the TD Bridge host",
    "JDF0100": "duplicate job id (a job with this JOB_ID already exists)",
    "JDF0200": "the robot named in PUBLISHER is not registered in TD Bridge",
    "JDF0203": "no robot registered at all in TD Bridge",
    "JDF0501": "DISC_TYPE missing (it is required)",
    "JDF0903": "the data is too large for the disc",
    "JDF1400": "FORMAT is not valid for this disc type",
    "JDF1401": "FORMAT is not valid for this disc type",
    "JDF1402": "FORMAT is not valid for this disc type",
    "JDF1501": "the label design file (LABEL) is missing",
    "JDF1600": "the merge file (REPLACE_FIELD) is missing",
    "STP000": "paused after write retries",
    "STP001": "paused after write retries",
    "STP002": "paused after write retries",
    "RTN000": "input stacker empty: load blank discs",
    "RTN001": "output stacker full: remove the finished discs",
    "RTN002": "disc cover open: close it",
    "RTN003": "ink cartridge cover open: close it",
    "RTN004": "ink low: replace the cartridge",
    "RTN005": "no ink cartridge: insert one",
    "RTN006": "stacker removed: put it back",
}

# the job-file key each JDF range belongs to, where the reference makes it known
JDF_RANGES: dict[int, str] = {
    1: "JOB_ID",
    2: "PUBLISHER",
    5: "DISC_TYPE",
    9: "DATA",
    14: "FORMAT",
    15: "LABEL",
    16: "REPLACE_FIELD",
}

# device faults that cancel the job (CAN000-021, CAN100-103)
CAN_TEXT = "device fault, the job was cancelled (pick failure, disc dropped, drive or printer fatal error, or waste-ink pads full)"

RECOVERABLE_PREFIXES = ("RTN", "STP")  # the job waits; it goes on once the operator fixes the cause


def describe(code: str) -> str:
    """Clear text for a TD Bridge error code ('' for none)."""
    code = (code or "").strip().upper()
    if not code or code in ("0", "NONE"):
        return ""
    if code in NAMED:
        return f"{NAMED[code]} ({code})"
    m = re.fullmatch(r"([A-Z]{3})(\d+)", code)
    if not m:
        return f"TD Bridge error {code}"
    prefix, number = m.group(1), int(m.group(2))
    if prefix == "SYS":
        return f"TD Bridge system error ({code})"
    if prefix == "JDF":
        key = JDF_RANGES.get(number // 100)
        if key:
            return f"job file error in {key} ({code})"
        if 0 <= number <= 2999:
            return f"job file (JDF) error ({code})"
    if prefix == "CAN" and (0 <= number <= 21 or 100 <= number <= 103):
        return f"{CAN_TEXT} ({code})"
    if prefix == "STP":
        return f"paused by the robot ({code})"
    if prefix == "RTN":
        return f"the robot needs attention ({code})"
    return f"TD Bridge error {code}"


def is_recoverable(code: str) -> bool:
    """RTN/STP codes: the job is held, not failed."""
    return (code or "").strip().upper().startswith(RECOVERABLE_PREFIXES)
