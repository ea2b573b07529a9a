"""Helpers of the portal tests: a data folder with studies in storage and in the index."""

from __future__ import annotations

import contextlib
import http.client
import threading
from collections.abc import Iterator
from pathlib import Path

from support import write_study

from appliance import db, index


def stored_study(data: Path, name: str, **kw: object) -> str:
    """Write a study under data/storage/<name>, index it; returns its Study Instance UID."""
    paths = write_study(data / "storage" / name, **kw)  # type: ignore[arg-type]
    conn = db.connect(data)
    try:
        index.reindex(conn, data / "storage")
        from pydicom import dcmread

        return str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    finally:
        conn.close()


@contextlib.contextmanager
def serve(app: object) -> Iterator[int]:
    """Serve a WSGI app with cheroot on a free loopback port; yields the port once it listens."""
    from cheroot import wsgi

    server = wsgi.Server(("127.0.0.1", 0), app, numthreads=4)
    server.prepare()  # bound and listening from here on
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server.bind_addr[1]
    finally:
        server.stop()
        thread.join(10)


def get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET"
        ) -> tuple[int, dict[str, str], bytes]:
    """One request, redirects not followed: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
