"""Every setting refuses its bad values with a message that names the key, and loses nothing.

The list of keys comes from `appliance.config.SPECS`, so a new key without known-bad sample
values (its own `bad_examples` or its validator's) fails here until someone adds them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import burnstation

from appliance import cli
from appliance.config import SPECS, SettingError, Settings


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("settings") / "data"
    assert cli.main(["--data", str(folder), "init"]) == 0
    return folder


def run_cli(data: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(["--data", str(data), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_key_has_known_bad_values() -> None:
    missing = [key for key, spec in SPECS.items() if not spec.refused_examples()]
    assert not missing, f"give these settings bad_examples in SPECS (or a validator that has them): {missing}"


def test_every_default_passes_its_own_validator() -> None:
    for key, spec in SPECS.items():
        assert spec.check(key, spec.default) == spec.default, key


@pytest.mark.parametrize("key", list(SPECS))
def test_bad_values_refused_by_cli(key: str, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (data / "settings.json").read_bytes()
    for value in SPECS[key].refused_examples():
        with pytest.raises(SettingError) as refused:
            SPECS[key].check(key, value)
        assert key in str(refused.value)
        code, out, err = run_cli(data, capsys, "config", "set", f"{key}={value}")
        assert code == 2, f"{key}={value!r} was accepted: {out}"
        assert key in err, f"{key}={value!r}: message does not name the key: {err}"
        assert err.startswith("burnstation: ")
        assert (data / "settings.json").read_bytes() == before, f"{key}={value!r} changed settings.json"


@pytest.mark.parametrize("value", ["", "A" * 14, "MY AET", "BACK\\SLASH", "MÜNCHEN", "ÄÖ"])
def test_station_ae_title_messages(value: str, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(data, capsys, "config", "set", f"dicom.aet={value}")
    assert code == 2
    assert "dicom.aet" in err and "AE title" in err


def test_longest_station_ae_title_leaves_room_for_derived_titles(data: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(data, capsys, "config", "set", "dicom.aet=ABCDEFGHIJKLM")
    assert code == 0, err
    titles = Settings(data).derived_aets()
    assert max(len(t) for t in titles) == 16
    assert "ABCDEFGHIJKLM_TP" in titles
    code, _out, err = run_cli(data, capsys, "config", "set", "dicom.aet=ABCDEFGHIJKLMN")
    assert code == 2 and "_TE" in err
    assert run_cli(data, capsys, "config", "set", "dicom.aet=BURNSTATION")[0] == 0


def test_cross_key_rules(data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    values = Settings(data).all()
    before = (data / "settings.json").read_bytes()
    cases = [
        ([f"dicom.port={values['dicom.tls_port']}"], "dicom.tls_port"),
        (["dicom.port=4000", "dicom.tls_port=4000"], "dicom.tls_port"),
        ([f"http.port={values['dicom.port']}"], "http.port"),
        ([f"hl7.port={values['http.port']}"], "hl7.port"),
        (["dicom.tls_require_client_cert=true"], "dicom.tls_require_client_cert"),
        ([f"dicom.tls_trusted_ca={tmp_path / 'missing.pem'}"], "dicom.tls_trusted_ca"),
        (["hl7.destination_host=ris.example.org"], "hl7.destination_port"),
    ]
    for assignments, key in cases:
        code, out, err = run_cli(data, capsys, "config", "set", *assignments)
        assert code == 2, f"{assignments} accepted: {out}"
        assert key in err, err
    assert (data / "settings.json").read_bytes() == before
    # both ports closed is fine; one closed port may equal nothing
    assert run_cli(data, capsys, "config", "set", "dicom.port=0", "dicom.tls_port=0")[0] == 0
    assert run_cli(data, capsys, "config", "set", f"dicom.port={values['dicom.port']}",
                   f"dicom.tls_port={values['dicom.tls_port']}")[0] == 0


def test_trusted_ca_must_be_a_pem_ca_file(data: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    for path in (junk, empty):
        code, _out, err = run_cli(data, capsys, "config", "set", f"dicom.tls_trusted_ca={path}")
        assert code == 2 and "dicom.tls_trusted_ca" in err, err
    good = data / "tls" / "ca.pem"
    code, _out, err = run_cli(data, capsys, "config", "set", f"dicom.tls_trusted_ca={good}",
                              "dicom.tls_require_client_cert=true")
    assert code == 0, err
    assert run_cli(data, capsys, "config", "set", "dicom.tls_trusted_ca=", "dicom.tls_require_client_cert=no")[0] == 0


def test_all_or_nothing(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = Settings(data).all()
    code, _out, err = run_cli(data, capsys, "config", "set", "burn.delay_seconds=7", "dicom.timeout=0")
    assert code == 2 and "dicom.timeout" in err
    assert Settings(data).all() == before


def test_unknown_key_and_malformed_assignment(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(data, capsys, "config", "set", "dicom.colour=blue")
    assert code == 2 and "dicom.colour" in err and "no such setting" in err
    code, _out, err = run_cli(data, capsys, "config", "set", "dicom.port")
    assert code == 2 and "key=value" in err
    code, _out, err = run_cli(data, capsys, "config", "set")
    assert code == 2


def test_good_values_are_converted_and_stored(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(data, capsys, "config", "set", "dicom.debug=yes", "dicom.timeout= 45 ",
                             "burn.group_by=study", "hl7.default_charset=UNICODE UTF-8", "dicom.bind=127.0.0.1")
    assert code == 0, err
    values = json.loads(run_cli(data, capsys, "config", "show", "--json")[1])
    assert values["dicom.debug"] is True
    assert values["dicom.timeout"] == 45
    assert values["burn.group_by"] == "study"
    assert values["hl7.default_charset"] == "ISO_IR 192"
    assert values["dicom.bind"] == "127.0.0.1"
    assert run_cli(data, capsys, "config", "set", "dicom.debug=false", "dicom.timeout=30", "burn.group_by=patient",
                   "dicom.bind=")[0] == 0


def test_show_lists_every_key(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_cli(data, capsys, "config", "show")
    assert code == 0
    for key in SPECS:
        assert f"{key} = " in out


def test_a_second_reader_sees_changes(data: Path) -> None:
    reader = Settings(data)
    assert reader.get("burn.delay_seconds") == 120 or reader.get("burn.delay_seconds")
    writer = Settings(data)
    writer.set("burn.delay_seconds", 33)
    assert reader.changed()
    assert reader.get("burn.delay_seconds") == 33
    writer.set("burn.delay_seconds", 120)
    assert not [p.name for p in data.iterdir() if p.name.startswith(".settings.") and p.name != ".settings.lock"]


# --------------------------------------------------------------------------- known nodes

BAD_NODES = [
    (["", "127.0.0.1", "104"], "node AE title"),
    (["A" * 17, "127.0.0.1", "104"], "node AE title"),
    (["MY NODE", "127.0.0.1", "104"], "node AE title"),
    (["BACK\\SLASH", "127.0.0.1", "104"], "node AE title"),
    (["MÜNCHEN", "127.0.0.1", "104"], "node AE title"),
    (["NODE", "", "104"], "node host"),
    (["NODE", "bad host", "104"], "node host"),
    (["NODE", "under_score", "104"], "node host"),
    (["NODE", "127.0.0.1", "0"], "node port"),
    (["NODE", "127.0.0.1", "-1"], "node port"),
    (["NODE", "127.0.0.1", "65536"], "node port"),
    (["NODE", "127.0.0.1", "http"], "node port"),
    (["NODE", "127.0.0.1", "104", "--services", "echo,teleport"], "node services"),
    (["NODE", "127.0.0.1", "104", "--description", "two\nlines"], "node description"),
]


@pytest.mark.parametrize(("args", "field"), BAD_NODES)
def test_bad_nodes_refused(args: list[str], field: str, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (data / "settings.json").read_bytes()
    code, out, err = run_cli(data, capsys, "nodes", "add", *args)
    assert code == 2, out
    assert field in err, err
    assert (data / "settings.json").read_bytes() == before


def test_nodes_add_list_replace_delete(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(data, capsys, "nodes", "add", "PACS1", "pacs.example.org", "104", "--tls",
                   "--services", "echo,store")[0] == 0
    assert run_cli(data, capsys, "nodes", "add", "WS_2", "10.0.0.7", "11112")[0] == 0
    out = run_cli(data, capsys, "nodes", "list")[1]
    assert "PACS1" in out and "pacs.example.org:104 TLS" in out and "echo,store" in out
    node = Settings(data).node("PACS1")
    assert node is not None and node.tls and node.services == ("echo", "store")
    assert run_cli(data, capsys, "nodes", "add", "PACS1", "10.0.0.8", "105")[0] == 0  # same AET replaces
    nodes = [n for n in Settings(data).nodes() if n.aet == "PACS1"]
    assert len(nodes) == 1 and nodes[0].host == "10.0.0.8" and not nodes[0].tls
    assert run_cli(data, capsys, "nodes", "delete", "PACS1")[0] == 0
    code, _out, err = run_cli(data, capsys, "nodes", "delete", "PACS1")
    assert code == 1 and "PACS1" in err
    assert Settings(data).node("PACS1") is None and Settings(data).node("WS_2") is not None


def test_real_cli_process_refuses_with_exit_code_2(data: Path) -> None:
    proc = burnstation(data, "config", "set", "dicom.port=65536", check=False)
    assert proc.returncode == 2
    assert "dicom.port" in proc.stderr
    proc = burnstation(data, "nodes", "add", "NODE", "127.0.0.1", "70000", check=False)
    assert proc.returncode == 2
    assert "node port" in proc.stderr


def test_a_reader_never_sees_defaults_during_a_write(tmp_path):
    """An update is one atomic file replacement: a reader in another thread (or process) always
    sees the stored values, never the defaults a half-done rewrite would show."""
    import threading

    from appliance.config import Settings

    Settings(tmp_path).initialize()
    Settings(tmp_path).set("http.port", 18123)
    seen: set[int] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(Settings(tmp_path).get("http.port"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(60):
            Settings(tmp_path).set("http.institution", f"clinic {n}")
    finally:
        done.set()
        reader.join()
    assert seen == {18123}
