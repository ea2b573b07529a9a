"""Event handlers bound to the SCP, one module per DIMSE service."""

from __future__ import annotations

from pydicom.dataset import Dataset

BAD_IDENTIFIER = 0xA900  # C-FIND: identifier does not match SOP class
UNABLE_TO_PROCESS = 0xC000


def failure_status(status: int, comment: str) -> Dataset:
    """A failed request's status dataset: the status and an Error Comment (cut to its 64 characters)."""
    rsp = Dataset()
    rsp.Status = status
    rsp.ErrorComment = comment[:64]
    return rsp
