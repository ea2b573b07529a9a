"""Every change the station makes to pynetdicom internals, in one place.

pynetdicom is pinned to 3.0.* in pyproject.toml; `tests/test_pnd_tuning.py` fails when an internal
this module relies on changes shape, so an upgrade is a deliberate act.

1. Several called AE titles on one listener: pynetdicom compares the called AE title with one
   title only. The station answers to `<AET>`, `<AET>_E`, `<AET>_P`, `<AET>_TE` and `<AET>_TP`,
   so the acceptor's negotiation is wrapped: an AE that carries `accepted_called_aets` rejects
   any other called title (A-ASSOCIATE-RJ, reason 7 "called AE title not recognised") and takes
   the called title as its own for the rest of the association.
"""

from __future__ import annotations

from typing import Any, cast

from pynetdicom import evt
from pynetdicom.acse import ACSE

_ORIGINAL_NEGOTIATE = ACSE._negotiate_as_acceptor
_installed = False


def _negotiate_as_acceptor(self: ACSE) -> None:
    allowed = getattr(self.assoc.ae, "accepted_called_aets", None)
    if allowed is not None:
        primitive = cast(Any, self.requestor.primitive)
        called = str(primitive.called_ae_title).strip()
        self.requestor.ae_title = primitive.calling_ae_title
        if called not in allowed:
            self.assoc.acceptor.ae_title = called
            self.send_reject(0x01, 0x01, 0x07)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        self.assoc.acceptor.ae_title = called
    _ORIGINAL_NEGOTIATE(self)


def install() -> None:
    """Apply the patches (idempotent)."""
    global _installed
    if _installed:
        return
    ACSE._negotiate_as_acceptor = _negotiate_as_acceptor  # type: ignore[method-assign]
    _installed = True


def internals_present() -> list[str]:
    """Names of the internals this module relies on that are missing (empty when all is well)."""
    missing = []
    if not callable(getattr(ACSE, "send_reject", None)):
        missing.append("ACSE.send_reject")
    if "_negotiate_as_acceptor" not in ACSE.__dict__:
        missing.append("ACSE._negotiate_as_acceptor")
    return missing
