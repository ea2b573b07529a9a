"""The station as a client: echo and send to known nodes, within `dicom.max_connections`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE, build_context

from appliance import tlsca
from appliance.config import Node, Settings
from appliance.dicom.handlers.retrieve import contexts_for, outgoing_slots, prepare


def _client_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.aet())
    timeout = float(settings.get("dicom.timeout"))
    ae.acse_timeout = ae.dimse_timeout = ae.connection_timeout = timeout
    ae.network_timeout = timeout
    return ae


def _tls_args(data_dir: str | os.PathLike[str], node: Node, settings: Settings) -> tuple | None:
    if not node.tls:
        return None
    return (tlsca.client_context(data_dir, trusted_ca=settings.get("dicom.tls_trusted_ca")), None)


def echo(data_dir: str | os.PathLike[str], settings: Settings, node: Node) -> tuple[bool, str]:
    """C-ECHO a known node; (success, human-readable result)."""
    ae = _client_ae(settings)
    ae.add_requested_context("1.2.840.10008.1.1")
    with outgoing_slots(int(settings.get("dicom.max_connections"))):
        assoc = ae.associate(node.host, node.port, ae_title=node.aet, tls_args=_tls_args(data_dir, node, settings))
        if not assoc.is_established:
            if assoc.is_rejected:
                return False, f"association rejected by {node.aet}@{node.host}:{node.port}"
            return False, f"no association with {node.aet}@{node.host}:{node.port} (refused, timed out or aborted)"
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
    if status is not None and getattr(status, "Status", None) == 0x0000:
        return True, f"{node.aet}@{node.host}:{node.port} answered C-ECHO"
    return False, f"{node.aet} answered C-ECHO with status {getattr(status, 'Status', 'none')}"


def send_files(data_dir: str | os.PathLike[str], settings: Settings, node: Node,
               rows: Iterable[dict]) -> tuple[int, int]:
    """C-STORE indexed instances (dicts with path, sop_class, transfer_syntax) to a node; (sent, failed)."""
    rows = list(rows)
    ae = _client_ae(settings)
    contexts = contexts_for(rows) or [build_context("1.2.840.10008.1.1")]
    sent = failed = 0
    with outgoing_slots(int(settings.get("dicom.max_connections"))):
        assoc = ae.associate(node.host, node.port, ae_title=node.aet, contexts=contexts,
                             tls_args=_tls_args(data_dir, node, settings))
        if not assoc.is_established:
            return 0, len(rows)
        try:
            for row in rows:
                try:
                    ds = prepare(dcmread(Path(row["path"])), assoc.accepted_contexts)
                    status = assoc.send_c_store(ds)
                    ok = status is not None and getattr(status, "Status", 0xC000) in (0x0000, 0xB000, 0xB007, 0xB006)
                except Exception:
                    ok = False
                sent += ok
                failed += not ok
        finally:
            assoc.release()
    return sent, failed
