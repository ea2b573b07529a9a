"""Inbound HL7 orders: one MLLP frame in, the worklist changed, one ACK (or nothing) out.

The ACK is sent only after the change is committed, so an AA means the order is in state.db.
The ACK is encoded in the charset the message was decoded with (MSH-18 echoed).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from appliance import db
from appliance.config import Settings, python_codec
from appliance.hl7 import message as hl7msg
from appliance.hl7.message import HL7Error
from appliance.worklist import items, mapping

LOG = logging.getLogger("burnstation.hl7")


class OrderReceiver:
    """Answers MLLP frames: decode, map, apply, ACK."""

    def __init__(self, data_dir: Path, settings: Settings | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings or Settings(data_dir)
        self._conns = db.PerThread(self.data_dir)  # a thread per MLLP connection, each closes its own
        self.received = 0
        self._count_lock = threading.Lock()

    def conn(self) -> db.sqlite3.Connection:
        return self._conns.get()

    def on_frame(self, payload: bytes, truncated: bool, peer: str) -> bytes | None:
        settings = self.settings.all()
        log_on = settings["hl7.log_messages"]
        with self._count_lock:
            self.received += 1
        if log_on:
            LOG.info("HL7 from %s%s: %s", peer, " (truncated)" if truncated else "",
                     payload.decode("latin_1", "replace").replace("\r", "\n")[:8000])
        decoded = None
        try:
            if truncated:
                raise HL7Error("AR", "truncated MLLP frame (no end block): message not processed",
                               hl7msg.control_id_of(payload))
            decoded = hl7msg.decode(payload, settings["hl7.default_charset"])
            updates = mapping.orders(decoded)
            results = items.apply(self.conn(), updates, time.time(), decoded.control_id)
            code, text = "AA", "; ".join(results)
            LOG.info("HL7 %s from %s: %s", decoded.control_id, peer, text)
        except HL7Error as exc:
            code, text = exc.code, exc.text
            LOG.warning("HL7 message from %s answered %s: %s", peer, code, text)
        except Exception as exc:  # the database, a bug: the sender must retry later
            LOG.exception("HL7 message from %s could not be stored", peer)
            code, text = "AE", f"internal error: {exc}"
        if not settings["hl7.send_ack"]:
            return None
        charset = decoded.charset if decoded is not None else None
        ack = hl7msg.build_ack(
            code,
            control_id=decoded.control_id if decoded else hl7msg.control_id_of(payload),
            text=text if code != "AA" else "",
            sending_application=settings["hl7.sending_application"],
            sending_facility=settings["hl7.sending_facility"],
            receiving_application=decoded.sending_application if decoded else "",
            receiving_facility=decoded.sending_facility if decoded else "",
            trigger=decoded.trigger if decoded else "",
            version=decoded.version if decoded else "2.5.1",
            charset=charset if decoded is not None and decoded.msh18 else None,
        )
        codec = python_codec(charset) if charset else "ascii"
        return ack.encode(codec, "replace")
