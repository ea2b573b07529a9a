"""The transfer process's loop: claims queued transfers and the CLI's and web's requests (echo,
query) and starts each on a thread of its own, and feeds the forwarding rules from the index.

It imports neither pydicom nor pynetdicom: the associations (`engine`) are imported when the first
transfer or request runs, so that a station that sends nothing (most test stations) does not pay
for them at start.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from appliance import db, index
from appliance.config import Settings
from appliance.transfer import jobs
from appliance.transfer.rules import list_rules

if TYPE_CHECKING:
    from appliance.dicom.slots import OutgoingSlots, Slot

LOG = logging.getLogger("burnstation.transfer")


class Engine:
    """What the `transfer` service runs: dispatch transfers, answer queries, feed forwarding rules."""

    def __init__(self, data_dir: Path, settings: Settings | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings or Settings(self.data_dir)
        self.conn = db.connect(self.data_dir)
        self._slots: OutgoingSlots | None = None
        self._engine: ModuleType | None = None
        self._setup = threading.Lock()  # the two above, made once
        self.running: dict[str, threading.Thread] = {}
        self.lock = threading.Lock()
        self.kick = threading.Event()  # set: run the next pass now (work queued, a slot freed)
        self._forwarded = 0.0
        self._pruned = 0.0

    @property
    def slots(self) -> OutgoingSlots:
        """The station-wide cap of outgoing associations (made when first needed: appliance.dicom
        brings pydicom)."""
        with self._setup:
            if self._slots is None:
                from appliance.dicom.slots import OutgoingSlots

                self._slots = OutgoingSlots(self.data_dir, lambda: int(self.settings.get("dicom.max_connections")))
            return self._slots

    def associations(self) -> ModuleType:
        """appliance.transfer.engine (pydicom, pynetdicom), with the library set up for requestors:
        pnd_tuning's event-driven reactors (no 1 ms sleeps per message), C-STORE of a file whose stored
        syntax the peer accepted as its bytes are (scu.store_rows), pynetdicom's per-PDU logging
        handlers only with dicom.debug (they also keep 3c off). Once, when the first transfer or
        query runs: a station that sends nothing does not pay the imports (~0.6 s of CPU)."""
        with self._setup:
            if self._engine is None:
                from pynetdicom import _config

                from appliance.dicom import pnd_tuning
                from appliance.transfer import engine

                pnd_tuning.install()
                _config.STORE_SEND_CHUNKED_DATASET = True
                pnd_tuning.set_protocol_logging(bool(self.settings.get("dicom.debug")))
                self._engine = engine
            return self._engine

    def recover(self) -> None:
        journaled = jobs.apply_journals(self.conn, self.data_dir)
        if journaled:
            LOG.info("%d answer(s) of interrupted sends taken from their journals", journaled)
        since = jobs.interrupted_retrievals_since(self.conn)
        if since is not None:  # retrieved files whose index commit never ran
            from appliance.storage import Store

            index.start_removing_unacknowledged(self.data_dir, Store(self.data_dir), since)
        resumed = jobs.recover(self.conn)
        if resumed:
            LOG.info("%d transfer(s) interrupted by the last stop queued again", resumed)
        jobs.fail_interrupted_requests(self.conn)

    def step(self) -> None:
        """One pass: start requests and transfers that can start, then feed the forwarding rules."""
        while (request := jobs.claim_request(self.conn)) is not None:
            threading.Thread(target=self._answer, args=(request,), name=f"request-{request['id']}",
                             daemon=True).start()
        self.dispatch()
        now = time.monotonic()
        if now - self._forwarded >= 1.0:
            self._forwarded = now
            self.forward()
        if now - self._pruned >= 60.0:
            self._pruned = now
            jobs.drop_stale_requests(self.conn, 3600)

    def dispatch(self) -> None:
        with self.lock:
            for tid in [t for t, th in self.running.items() if not th.is_alive()]:
                del self.running[tid]
        # the queue first: a pass with nothing queued (most of them) touches no lock file
        while (transfer := jobs.next_queued(self.conn, skip=list(self.running))) is not None:
            slot = self.slots.try_acquire()
            if slot is None:
                return
            if not jobs.claim(self.conn, transfer["id"]):
                slot.release()
                continue
            thread = threading.Thread(target=self._run, args=(transfer, slot), name=f"transfer-{transfer['id']}",
                                      daemon=True)
            with self.lock:
                self.running[transfer["id"]] = thread
            thread.start()

    def _run(self, transfer: dict[str, Any], slot: Slot) -> None:
        try:
            try:
                engine = self.associations()
            except Exception as exc:  # e.g. pnd_tuning.LibraryChanged: nothing can be sent; say why
                LOG.exception("transfer %s cannot start", transfer["id"])
                conn = db.connect(self.data_dir)
                try:
                    jobs.finish(conn, transfer["id"], jobs.FAILED, error=f"{type(exc).__name__}: {exc}"[:500],
                                message="failed")
                finally:
                    conn.close()
                return
            engine.Runner(self, transfer).run()
        finally:
            slot.release()
            self.kick.set()  # the next queued transfer starts now, not at the next poll

    def _answer(self, request: dict[str, Any]) -> None:
        conn = db.connect(self.data_dir)
        try:
            node = self.settings.node(request["node"])
            if node is None:
                jobs.answer_request(conn, request["id"], error=f"{request['node']!r} is not a known node")
                return
            timeout = float(self.settings.get("dicom.timeout"))
            slot = self.slots.acquire(timeout)
            if slot is None:
                jobs.answer_request(conn, request["id"], error=f"all {self.slots.limit()} outgoing connections "
                                    f"stayed busy for dicom.timeout={timeout:g}s")
                return
            try:
                params = request["params"]
                engine = self.associations()
                if request["kind"] == "echo":
                    ok, message = engine.scu.echo(self.data_dir, self.settings, node)
                    jobs.answer_request(conn, request["id"], result={"ok": ok, "message": message})
                    return
                result = engine.run_query(self.data_dir, self.settings, node, params.get("level", "STUDY"),
                                   params.get("keys", {}))
                jobs.answer_request(conn, request["id"], result=result)
            finally:
                slot.release()
                self.kick.set()
        except Exception as exc:
            jobs.answer_request(conn, request["id"], error=str(exc) or type(exc).__name__)
        finally:
            conn.close()

    def forward(self) -> None:
        for rule in list_rules(self.settings):
            try:
                picked = jobs.collect_new(self.conn, rule.name, rule.called, rule.calling, rule.modalities)
                if picked:
                    LOG.info("rule %s: %d new instance(s) to forward to %s", rule.name, picked, rule.node)
                for tid in jobs.queue_stable(self.conn, rule.name, rule.node, rule.delay):
                    LOG.info("rule %s: transfer %s queued", rule.name, tid)
            except Exception:
                LOG.exception("forwarding rule %s failed", rule.name)

    def wait_idle(self, timeout: float) -> None:
        """At stop: give running transfers a moment (they resume after the restart anyway)."""
        deadline = time.monotonic() + timeout
        for thread in list(self.running.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
