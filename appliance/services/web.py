"""The web process: the technician UI (webui) served by cheroot on `http.port`, HTTPS when `http.ssl`.

Port 0 closes the server. A change of `http.port`, `http.ssl` or of the certificate reopens it within a second (other
settings are read per request). With SSL on, the uploaded certificate (tls/web.pem) is used, else
the device certificate made by `burnstation init` (TLS 1.2 or newer). The job and robot pages poll a JSON API rather than hold streams, so
a fixed pool of worker threads is enough. While no user exists, each start logs the setup code.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from appliance import accounts, tlsca
from appliance.config import Settings
from appliance.services import stop_event

LOG = logging.getLogger("burnstation.web")
THREADS = 16
RETRY_SECONDS = 5.0


def _make_server(data_dir: Path, port: int, ssl_on: bool) -> Any:
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    from webui.app import make_app

    server = wsgi.Server(("0.0.0.0", port), make_app(data_dir), numthreads=THREADS, server_name="burnstation",
                         timeout=30, shutdown_timeout=2)
    if ssl_on:
        cert, key = tlsca.web_cert_paths(data_dir)
        adapter = BuiltinSSLAdapter(str(cert), str(key))
        adapter.context = tlsca.web_context(data_dir)  # TLS 1.2+, the uploaded pair or the device's
        server.ssl_adapter = adapter
    server.prepare()  # binds now, so a taken port shows up here rather than in the thread
    return server


def _cert_stamp(data_dir: Path) -> tuple[str, int]:
    """Which certificate HTTPS would use and when it changed (an upload reopens the server)."""
    cert, _ = tlsca.web_cert_paths(data_dir)
    try:
        return cert.name, cert.stat().st_mtime_ns
    except FileNotFoundError:
        return cert.name, 0


def show_setup_code(data_dir: Path) -> None:
    """While no user exists, say the setup code again (it changes only when used)."""
    code = accounts.current_setup_code(data_dir)
    if code:
        LOG.warning("no web user yet: open the web UI and use the setup code %s (also in %s)", code,
                    accounts.setup_code_path(data_dir))


def serve(data_dir: str | os.PathLike[str], stop: threading.Event | None = None,
          ready: threading.Event | None = None) -> None:
    """Serve the web UI until `stop` is set, reopening when the port or SSL setting changes."""
    stop = stop_event(stop)
    data_dir = Path(data_dir)
    settings = Settings(data_dir)
    show_setup_code(data_dir)
    server = thread = None
    current: tuple[Any, ...] | None = None
    failed = False
    try:
        while True:
            wanted = (int(settings.get("http.port")), bool(settings.get("http.ssl")), _cert_stamp(data_dir))
            if wanted != current or (failed and server is None):
                if server is not None:
                    server.stop()
                    thread.join(10)
                    server = thread = None
                current, failed = wanted, False
                port, ssl_on, _ = wanted
                if port:
                    try:
                        server = _make_server(data_dir, port, ssl_on)
                    except Exception as exc:
                        LOG.error("could not open the web port %s: %s (retrying)", port, exc)
                        failed = True
                    else:
                        thread = threading.Thread(target=server.serve, name="web-server", daemon=True)
                        thread.start()
                        LOG.info("web UI on %s://0.0.0.0:%d/", "https" if ssl_on else "http", port)
                else:
                    LOG.info("web UI closed (http.port = 0)")
            if ready is not None:
                ready.set()  # after the first attempt: "running" means the port answers (or is closed)
            if stop.wait(RETRY_SECONDS if failed else 1.0):
                break
    finally:
        if server is not None:
            server.stop()
            thread.join(2.5)  # well inside the supervisor's 5 s before SIGKILL
