"""A real Orthanc (the Debian package) per test: generated JSON config, free ports, storage in tmp."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from support import free_port, port_free, wait_for

ORTHANC = "/usr/sbin/Orthanc"


class Orthanc:
    """`Orthanc config.json` on loopback; `modalities` maps a name to (AET, port) of peers it knows."""

    def __init__(self, root: Path, aet: str = "ORTHANC", modalities: dict[str, tuple[str, int]] | None = None,
                 dicom_port: int | None = None) -> None:
        self.root = root
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = dicom_port or free_port()
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": f"test-{aet}", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": aet,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
            "DicomModalities": {name: [m_aet, "127.0.0.1", port] for name, (m_aet, port) in
                                (modalities or {}).items()},
            "DicomCheckCalledAet": False, "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True, "DicomAlwaysAllowGet": True,
            "DicomAssociationCloseDelay": 0, "DicomScuTimeout": 30, "DicomScpTimeout": 30,
            "StorageCompression": False, "SaveJobs": False, "HttpDescribeErrors": True,
            "UnknownSopClassAccepted": True, "StableAge": 1,
        }
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=1))

    def start(self) -> Orthanc:
        """Start it and wait until its REST API answers. Its ports were picked free when it was made,
        but a parallel test (or an outgoing connection's ephemeral port) can take one before it
        starts: a taken HTTP port is picked again; the DICOM port is what peers were told, so it
        is waited for until its holder lets go (an ephemeral holder does soon)."""
        for attempt in range(20):
            log_path = self.root / "orthanc.log"
            start = log_path.stat().st_size if log_path.exists() else 0
            log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
            self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 60
            while True:
                try:
                    self.request("GET", "/system", timeout=2)  # short: the port may be someone else's
                    return self
                except (OSError, urllib.error.URLError):
                    if self.proc.poll() is None and time.monotonic() <= deadline:
                        time.sleep(0.1)
                        continue
                text = log_path.read_bytes()[start:].decode(errors="replace")
                if self.proc.poll() is None or "already in use" not in text or attempt == 19:
                    raise RuntimeError(f"Orthanc did not start: {text[-2000:]}") from None
                log.close()
                if "HTTP server" in text:
                    self.http_port = free_port()
                    config = json.loads(self.config.read_text())
                    config["HttpPort"] = self.http_port
                    self.config.write_text(json.dumps(config, indent=1))
                else:  # the DICOM port: wait until its holder lets go
                    wait_for(lambda: port_free(self.dicom_port), 30, f"port {self.dicom_port} free", every=0.05)
                break
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 30) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = resp.read()
        return json.loads(data) if data else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, paths: list[Path]) -> None:
        for path in paths:
            self.request("POST", "/instances", path.read_bytes())

    def sop_uids(self) -> list[str]:
        """Every SOP Instance UID Orthanc holds (a list: a duplicate would show twice)."""
        out = []
        for oid in self.get("/instances"):
            out.append(self.get(f"/instances/{oid}/simplified-tags")["SOPInstanceUID"])
        return out

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])
