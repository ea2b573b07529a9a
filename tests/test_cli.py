"""The `burnstation` command line contract: init, the data folder, run/stop, echo exit codes."""

from __future__ import annotations

import os
import signal
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from support import BIN, Station, burnstation, dcmtk


def test_init_prints_titles_ports_and_ca(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = burnstation(data, "init")
    out = proc.stdout
    for title in ("BURNSTATION", "BURNSTATION_E", "BURNSTATION_P", "BURNSTATION_TE", "BURNSTATION_TP"):
        assert title in out
    assert "11112" in out and "2762" in out
    ca = data / "tls" / "ca.pem"
    assert str(ca) in out
    for sub in ("storage", "discs", "spool", "tls", "logs"):
        assert (data / sub).is_dir()
    assert (data / "settings.json").is_file() and (data / "state.db").is_file()
    # private keys are private
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((data / "tls" / key).stat().st_mode) == 0o600
    # the server certificate is signed by the device CA and usable for TLS 1.2+
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(data / "tls" / "server.pem", data / "tls" / "server.key")
    cert = x509.load_pem_x509_certificate((data / "tls" / "server.pem").read_bytes())
    authority = x509.load_pem_x509_certificate(ca.read_bytes())
    assert cert.issuer == authority.subject
    cert.verify_directly_issued_by(authority)
    # a second init keeps what exists
    before = (data / "tls" / "server.key").read_bytes()
    burnstation(data, "init")
    assert (data / "tls" / "server.key").read_bytes() == before


def test_every_device_has_its_own_keys(tmp_path: Path) -> None:
    burnstation(tmp_path / "a", "init")
    burnstation(tmp_path / "b", "init")
    for name in ("ca.key", "server.key", "ca.pem"):
        assert (tmp_path / "a" / "tls" / name).read_bytes() != (tmp_path / "b" / "tls" / name).read_bytes()


def test_data_folder_from_environment(tmp_path: Path) -> None:
    data = tmp_path / "envdata"
    env = dict(os.environ, BURNSTATION_DATA=str(data))
    proc = subprocess.run([str(BIN / "burnstation"), "init"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (data / "settings.json").exists()
    proc = subprocess.run([str(BIN / "burnstation"), "config", "set", "dicom.aet=FROMENV"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "FROMENV" in (data / "settings.json").read_text()


def test_commands_without_init_say_so(tmp_path: Path) -> None:
    for args in (("config", "show"), ("nodes", "list"), ("run",), ("reindex",)):
        proc = burnstation(tmp_path / "nothing", *args, check=False, process=args == ("run",))
        assert proc.returncode != 0
        assert "burnstation init" in proc.stderr, proc.stderr


@pytest.mark.station
def test_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    st = Station(tmp_path / "data")
    st.start()
    try:
        assert dcmtk("echoscu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port)).returncode == 0
    finally:
        assert st.proc is not None
        st.proc.send_signal(signal.SIGTERM)  # the supervisor alone, as systemd or Ctrl-C would
        code = st.proc.wait(30)
        st.proc = None
    assert code == 0, st.log()[-2000:]
    assert dcmtk("echoscu", "-to", "3", "-aec", "BURNSTATION", "127.0.0.1", str(st.port)).returncode != 0


def test_simulate_without_the_simulator_says_how_to_install_it(tmp_path: Path, monkeypatch, capsys) -> None:
    """The simulator is its own distribution (hardware-sim/), absent from the appliance image."""
    import sys

    from appliance import cli
    from appliance.services import station

    data = tmp_path / "data"
    assert cli.main(["--data", str(data), "init"]) == 0
    monkeypatch.setitem(sys.modules, "burnstation_sim", None)  # how Python marks a module not importable
    started = []
    monkeypatch.setattr(station, "run", lambda *a, **k: started.append(a) or 0)  # would run the supervisor
    capsys.readouterr()
    assert cli.main(["--data", str(data), "run", "--simulate"]) == 1
    err = capsys.readouterr().err
    assert "--simulate needs the robot simulator" in err and "hardware-sim" in err
    assert started == []
