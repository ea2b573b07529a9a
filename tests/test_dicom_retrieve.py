"""C-MOVE to known nodes and C-GET with dcmtk movescu/getscu, plus the access rules around them.

Received files are compared with what was sent by SOP Instance UID (and, for a JPEG-lossless
study moved to a peer that only takes uncompressed data, pixel by pixel).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import JPEGLosslessSV1, generate_uid
from support import (
    NOT_AUTHORISED,
    Station,
    burnstation,
    configure,
    dcmtk,
    findscu,
    free_port,
    make_dataset,
    storescp,
    wait_port,
    write_study,
)

UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):
    """A station with two studies (one stored JPEG lossless) and two destinations known to it."""
    root = tmp_path_factory.mktemp("retrieve")
    plain = write_study(root / "plain", n_series=2, per_series=3, patient_id="PMOVE", rows=16, cols=16)
    jpeg_src = write_study(root / "jpegsrc", n_series=1, per_series=3, patient_id="PJPEG", rows=16, cols=16)
    jpeg_dir = root / "jpeg"
    jpeg_dir.mkdir()
    jpeg = []
    for path in jpeg_src:
        out = jpeg_dir / path.name
        r = dcmtk("dcmcjpeg", str(path), str(out))
        assert r.returncode == 0, r.stderr
        assert dcmread(out).file_meta.TransferSyntaxUID == JPEGLosslessSV1
        jpeg.append(out)
    st = Station(root / "data")
    any_dest, any_port = root / "dest_any", free_port()
    raw_dest, raw_port = root / "dest_raw", free_port()
    burnstation(st.data, "nodes", "add", "MOVER", "127.0.0.1", "104")
    burnstation(st.data, "nodes", "add", "DEST", "127.0.0.1", str(any_port))
    burnstation(st.data, "nodes", "add", "RAWDEST", "127.0.0.1", str(raw_port))
    burnstation(st.data, "nodes", "add", "NOSTORE", "127.0.0.1", str(raw_port), "--services", "echo,find")
    st.start()
    r = dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, plain))
    assert r.returncode == 0, r.stderr
    r = dcmtk("storescu", "-xs", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, jpeg))
    assert r.returncode == 0, r.stderr
    with storescp(any_dest, "DEST", any_port, "+xa"), storescp(raw_dest, "RAWDEST", raw_port):
        yield {"st": st, "plain": plain, "jpeg": jpeg, "jpeg_src": jpeg_src, "any": any_dest, "raw": raw_dest,
               "root": root}
    st.stop()


def uids(paths: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def received(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def clear(folder: Path) -> None:
    for p in received(folder):
        p.unlink()


def movescu(st: Station, dest: str, *keys: str, aet: str = "MOVER", model: str = "-S") -> tuple[int, str]:
    args = [model, "-v", "-aet", aet, "-aec", "BURNSTATION", "-aem", dest]
    for k in keys:
        args += ["-k", k]
    r = dcmtk("movescu", *args, "127.0.0.1", str(st.port), timeout=120)
    return r.returncode, r.stdout + r.stderr


def study_uid(paths: list[Path]) -> str:
    return str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def test_stored_as_received(pacs) -> None:
    st = pacs["st"]
    stored = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): dcmread(p, stop_before_pixels=True)
              for p in (st.data / "storage").rglob("*.dcm")}
    for path in pacs["jpeg"]:
        sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert stored[sop].file_meta.TransferSyntaxUID == JPEGLosslessSV1


def test_move_study_delivers_every_instance(pacs) -> None:
    clear(pacs["any"])
    code, out = movescu(pacs["st"], "DEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid(pacs['plain'])}")
    assert code == 0, out
    assert "Success" in out, out
    got = received(pacs["any"])
    assert uids(got) == uids(pacs["plain"])
    assert len(got) == len(pacs["plain"])


def test_move_patient_series_and_image_levels(pacs) -> None:
    st = pacs["st"]
    clear(pacs["any"])
    code, out = movescu(st, "DEST", "QueryRetrieveLevel=PATIENT", "PatientID=PJPEG", model="-P")
    assert code == 0, out
    assert uids(received(pacs["any"])) == uids(pacs["jpeg"])
    clear(pacs["any"])
    first = dcmread(pacs["plain"][0], stop_before_pixels=True)
    code, out = movescu(st, "DEST", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={first.StudyInstanceUID}",
                        f"SeriesInstanceUID={first.SeriesInstanceUID}")
    assert code == 0, out
    want = {str(d.SOPInstanceUID) for d in (dcmread(p, stop_before_pixels=True) for p in pacs["plain"])
            if d.SeriesInstanceUID == first.SeriesInstanceUID}
    assert uids(received(pacs["any"])) == want
    clear(pacs["any"])
    code, out = movescu(st, "DEST", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={first.StudyInstanceUID}",
                        f"SeriesInstanceUID={first.SeriesInstanceUID}", f"SOPInstanceUID={first.SOPInstanceUID}")
    assert code == 0, out
    assert uids(received(pacs["any"])) == {str(first.SOPInstanceUID)}


def test_jpeg_study_moved_to_uncompressed_only_peer_is_decompressed(pacs) -> None:
    clear(pacs["raw"])
    code, out = movescu(pacs["st"], "RAWDEST", "QueryRetrieveLevel=STUDY",
                        f"StudyInstanceUID={study_uid(pacs['jpeg'])}")
    assert code == 0, out
    got = received(pacs["raw"])
    assert uids(got) == uids(pacs["jpeg"])
    originals = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in pacs["jpeg_src"]}
    for path in got:
        ds = dcmread(path)
        assert str(ds.file_meta.TransferSyntaxUID) in UNCOMPRESSED
        assert np.array_equal(ds.pixel_array, originals[str(ds.SOPInstanceUID)].pixel_array)


def test_jpeg_study_moved_to_peer_accepting_jpeg_stays_compressed(pacs) -> None:
    clear(pacs["any"])
    code, out = movescu(pacs["st"], "DEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid(pacs['jpeg'])}")
    assert code == 0, out
    got = received(pacs["any"])
    assert uids(got) == uids(pacs["jpeg"])
    assert {str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in got} == {JPEGLosslessSV1}


def test_get_retrieves_every_instance(pacs, tmp_path: Path) -> None:
    for files in (pacs["plain"], pacs["jpeg"]):
        out_dir = tmp_path / study_uid(files)
        out_dir.mkdir()
        r = dcmtk("getscu", "-S", "-v", "-aet", "MOVER", "-aec", "BURNSTATION", "-od", str(out_dir),
                  "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid(files)}",
                  "127.0.0.1", str(pacs["st"].port), timeout=120)
        assert r.returncode == 0, r.stderr
        got = received(out_dir)
        assert uids(got) == uids(files)
        assert len(got) == len(files)


def test_unknown_move_destination_is_a801(pacs) -> None:
    for dest in ("NOBODY", "NOSTORE"):
        code, out = movescu(pacs["st"], dest, "QueryRetrieveLevel=STUDY",
                            f"StudyInstanceUID={study_uid(pacs['plain'])}")
        assert "MoveDestinationUnknown" in out, out  # dcmtk's name for status A801
        assert "Success" not in out


def test_unknown_calling_ae_refused_for_find_move_get_but_echo_works(pacs, tmp_path: Path) -> None:
    st = pacs["st"]
    proc, responses = findscu(st.port, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}, tmp_path / "f",
                              aet="STRANGER")
    out = proc.stdout + proc.stderr
    assert responses == []
    assert NOT_AUTHORISED in out, out
    code, out = movescu(st, "DEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid(pacs['plain'])}",
                        aet="STRANGER")
    assert NOT_AUTHORISED in out, out
    clear(pacs["any"])
    get_dir = tmp_path / "g"
    get_dir.mkdir()
    r = dcmtk("getscu", "-S", "-v", "-aet", "STRANGER", "-aec", "BURNSTATION", "-od", str(get_dir),
              "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid(pacs['plain'])}",
              "127.0.0.1", str(st.port), timeout=60)
    assert NOT_AUTHORISED in r.stdout + r.stderr, r.stdout + r.stderr
    assert received(get_dir) == [] and received(pacs["any"]) == []
    r = dcmtk("echoscu", "-aet", "STRANGER", "-aec", "BURNSTATION", "127.0.0.1", str(st.port))
    assert r.returncode == 0, r.stderr


def test_node_services_are_enforced(pacs, tmp_path: Path) -> None:
    """A known node may only use the services it is given (here: echo and store, no query/retrieve)."""
    st = pacs["st"]
    burnstation(st.data, "nodes", "add", "STOREONLY", "127.0.0.1", "104", "--services", "echo,store")
    proc, responses = findscu(st.port, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}, tmp_path / "f",
                              aet="STOREONLY")
    assert responses == [] and NOT_AUTHORISED in proc.stdout + proc.stderr
    code, out = movescu(st, "DEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid(pacs['plain'])}",
                        aet="STOREONLY")
    assert NOT_AUTHORISED in out, out
    r = dcmtk("echoscu", "-aet", "STOREONLY", "-aec", "BURNSTATION", "127.0.0.1", str(st.port))
    assert r.returncode == 0


def test_known_ae_title_from_the_wrong_address_is_refused(pacs, tmp_path: Path) -> None:
    """A known node is its AE title *and* its host: the same title from another address is a stranger."""
    st = pacs["st"]
    burnstation(st.data, "nodes", "add", "ELSEWHERE", "192.0.2.10", "104")
    proc, responses = findscu(st.port, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}, tmp_path / "f",
                              aet="ELSEWHERE")
    assert responses == []
    assert NOT_AUTHORISED in proc.stdout + proc.stderr


def test_unknown_called_ae_rejected(pacs, tmp_path: Path) -> None:
    proc, responses = findscu(pacs["st"].port, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""},
                              tmp_path / "f", aet="MOVER", aec="NOT_ME")
    assert proc.returncode != 0
    assert "Called AE Title Not Recognized" in proc.stdout + proc.stderr
    assert responses == []


def test_move_to_a_dead_destination_fails_cleanly(pacs) -> None:
    st = pacs["st"]
    dead = free_port()
    burnstation(st.data, "nodes", "add", "DEADDEST", "127.0.0.1", str(dead))
    code, out = movescu(st, "DEADDEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid(pacs['plain'])}")
    assert "Success" not in out, out
    assert "Refused" in out or "Failed" in out, out
    r = dcmtk("echoscu", "-aet", "MOVER", "-aec", "BURNSTATION", "127.0.0.1", str(st.port))
    assert r.returncode == 0


def test_move_to_a_tls_node(pacs, tmp_path: Path) -> None:
    """A known node flagged TLS gets its copies over TLS (the peer trusts the station's device CA)."""
    st = pacs["st"]
    folder = tmp_path / "tls_dest"
    port = free_port()
    ca = st.data / "tls" / "ca.pem"
    tls_dir = st.data / "tls"
    burnstation(st.data, "nodes", "add", "TLSDEST", "127.0.0.1", str(port), "--tls")
    folder.mkdir()
    proc = subprocess.Popen(["/usr/bin/storescp", "-aet", "TLSDEST", "-od", str(folder), "+tls",
                             str(tls_dir / "server.key"), str(tls_dir / "server.pem"), "+cf", str(ca), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, TCP_NODELAY="1"))
    try:
        wait_port(port)
        code, out = movescu(st, "TLSDEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid(pacs['plain'])}")
        assert code == 0, out
        assert uids(received(folder)) == uids(pacs["plain"])
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def test_move_to_a_tls_node_with_its_own_ca(pacs, tmp_path: Path) -> None:
    """A TLS node whose certificate comes from the hospital's CA: refused until that CA is trusted
    through dicom.tls_trusted_ca, then delivered."""
    from cryptography.hazmat.primitives import serialization
    from test_dicom_tls import _make_ca, _make_client

    st = pacs["st"]
    ca_key, ca = _make_ca("Hospital CA")
    ca_file = tmp_path / "hospital-ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key, cert = _make_client(ca_key, ca, tmp_path, "pacs")
    folder, port = tmp_path / "hospital", free_port()
    folder.mkdir()
    burnstation(st.data, "nodes", "add", "HOSPITAL", "127.0.0.1", str(port), "--tls")
    proc = subprocess.Popen(["/usr/bin/storescp", "-aet", "HOSPITAL", "-od", str(folder), "+tls", key, cert,
                             "+cf", str(st.data / "tls" / "ca.pem"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, TCP_NODELAY="1"))
    try:
        wait_port(port)
        code, out = movescu(st, "HOSPITAL", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid(pacs['plain'])}")
        assert "Final Move Response (Success)" not in out, out
        assert received(folder) == []
        configure(st.data, f"dicom.tls_trusted_ca={ca_file}")
        try:
            code, out = movescu(st, "HOSPITAL", "QueryRetrieveLevel=STUDY",
                                f"StudyInstanceUID={study_uid(pacs['plain'])}")
            assert code == 0 and "Final Move Response (Success)" in out, out
            assert uids(received(folder)) == uids(pacs["plain"])
        finally:
            configure(st.data, "dicom.tls_trusted_ca=")
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def test_duplicate_sop_instance_replaces_the_old_copy(pacs, tmp_path: Path) -> None:
    st = pacs["st"]
    sop = generate_uid()
    first = make_dataset(patient_id="PDUP", sop_uid=sop, study_description="FIRST")
    second = make_dataset(patient_id="PDUP", sop_uid=sop, study_uid=first.StudyInstanceUID,
                          series_uid=first.SeriesInstanceUID, study_description="SECOND")
    for n, ds in enumerate((first, second)):
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        r = dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), str(path))
        assert r.returncode == 0, r.stderr
    files = [p for p in (st.data / "storage").rglob("*.dcm") if dcmread(p, stop_before_pixels=True).SOPInstanceUID == sop]
    assert len(files) == 1
    assert dcmread(files[0]).StudyDescription == "SECOND"
    proc, responses = findscu(st.port, {"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": sop,
                                        "StudyDescription": ""}, tmp_path / "f", aet="MOVER")
    assert len(responses) == 1


def test_missing_file_is_a_failed_sub_operation_not_a_success(pacs, tmp_path: Path) -> None:
    """A stored file that vanished: move and get report it (Warning, failed count 1), the rest arrives."""
    st = pacs["st"]
    files = write_study(tmp_path / "lost", n_series=1, per_series=3, patient_id="PLOST", rows=8, cols=8)
    assert dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, files)).returncode == 0
    lost = str(dcmread(files[1]).SOPInstanceUID)
    next(p for p in (st.data / "storage").rglob(f"{lost}.dcm")).unlink()
    rest = uids(files) - {lost}
    clear(pacs["any"])
    code, out = movescu(st, "DEST", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid(files)}")
    assert "Final Move Response (Success)" not in out, out
    assert "Warning" in out, out
    assert uids(received(pacs["any"])) == rest
    get_dir = tmp_path / "get"
    get_dir.mkdir()
    r = dcmtk("getscu", "-S", "-v", "-aet", "MOVER", "-aec", "BURNSTATION", "-od", str(get_dir),
              "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid(files)}",
              "127.0.0.1", str(st.port), timeout=120)
    out = r.stdout + r.stderr
    assert "Final Get Response (Success)" not in out, out
    assert uids(received(get_dir)) == rest


def test_station_sends_a_study_to_a_known_node(pacs) -> None:
    """scu.send_files (the UI's "send to node"): every instance arrives, JPEG decompressed for a
    peer that only takes uncompressed data."""
    import sqlite3

    from appliance.config import Settings
    from appliance.dicom import scu

    st = pacs["st"]
    settings = Settings(st.data)
    conn = sqlite3.connect(st.data / "state.db", timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute("SELECT * FROM instances WHERE study_uid IN (?, ?)",
                                               (study_uid(pacs["plain"]), study_uid(pacs["jpeg"])))]
    finally:
        conn.close()
    assert len(rows) == len(pacs["plain"]) + len(pacs["jpeg"])
    clear(pacs["raw"])
    node = settings.node("RAWDEST")
    assert node is not None
    sent, failed = scu.send_files(st.data, settings, node, rows)
    assert (sent, failed) == (len(rows), 0)
    got = received(pacs["raw"])
    assert uids(got) == uids(pacs["plain"]) | uids(pacs["jpeg"])
    assert {str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in got} <= UNCOMPRESSED
    ok, message = scu.echo(st.data, settings, node)
    assert ok, message


# (how to make the file, storescu proposal, transfer syntax the station must keep, lossless)
SYNTAXES = [
    (None, "-xi", "1.2.840.10008.1.2", True),
    (["dcmconv", "+tb"], "-xb", "1.2.840.10008.1.2.2", True),
    (["dcmconv", "+td"], "-xd", "1.2.840.10008.1.2.1.99", True),
    (["dcmcjpeg", "+eb", "+un"], "-xy", "1.2.840.10008.1.2.4.50", False),
    (["dcmcjpeg", "+ee", "+un"], "-xx", "1.2.840.10008.1.2.4.51", False),
    (["dcmcjpeg", "+e1"], "-xs", "1.2.840.10008.1.2.4.70", True),
    (["dcmcjpls"], "-xt", "1.2.840.10008.1.2.4.80", True),
    (["dcmcjpls", "+en", "+un"], "-xu", "1.2.840.10008.1.2.4.81", False),
    (["dcmcrle"], "-xr", "1.2.840.10008.1.2.5", True),
    ("pydicom:1.2.840.10008.1.2.4.90", "-xv", "1.2.840.10008.1.2.4.90", True),
]


def test_every_transfer_syntax_is_stored_as_received(pacs, tmp_path: Path) -> None:
    """SPEC section 4: implicit/explicit/big endian, deflate, JPEG baseline/extended/lossless, JPEG-LS,
    JPEG 2000 and RLE are accepted and kept as sent (pixels intact for the lossless ones)."""
    st = pacs["st"]
    for n, (make, proposal, syntax, lossless) in enumerate(SYNTAXES):
        original = make_dataset(patient_id="PSYNTAX", rows=64, cols=64, bits=8, seed=n,
                                 instance_number=n + 1)
        plain = tmp_path / f"{n}.dcm"
        original.save_as(plain, enforce_file_format=True)
        sent = plain
        if isinstance(make, list):
            sent = tmp_path / f"{n}.{make[0]}.dcm"
            r = dcmtk(make[0], *make[1:], str(plain), str(sent))
            assert r.returncode == 0, r.stderr
        elif isinstance(make, str):
            ds = dcmread(plain)
            try:
                ds.compress(make.split(":", 1)[1], generate_instance_uid=False)
            except Exception as exc:  # pragma: no cover - depends on the installed encoders
                pytest.fail(f"cannot make {syntax} here: {exc}")
            sent = tmp_path / f"{n}.j2k.dcm"
            ds.save_as(sent, enforce_file_format=True)
        r = dcmtk("storescu", proposal, "-aec", "BURNSTATION", "127.0.0.1", str(st.port), str(sent))
        assert r.returncode == 0, f"{syntax}: {r.stderr}"
        stored = next((st.data / "storage").rglob(f"{original.SOPInstanceUID}.dcm"), None)
        assert stored is not None, f"{syntax}: not stored; storescu said {r.stdout + r.stderr}"
        copy = dcmread(stored)
        assert str(copy.file_meta.TransferSyntaxUID) == syntax
        if lossless:
            assert np.array_equal(copy.pixel_array, original.pixel_array), syntax
