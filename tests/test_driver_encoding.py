"""The robots' job-file code page (drivers/encoding.py): vendor defaults, a checked setting, strict
encoding, and text made to fit on purpose (diacritics dropped only where the code page lacks them,
another script replaced by the Patient ID)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import publish
from appliance.burn.robots import validate_robot
from appliance.config import SettingError
from drivers import encoding
from drivers.common import write_aside_then_rename
from drivers.epson import jdf
from drivers.epson.publisher import EpsonPublisher
from drivers.primera import jrq
from drivers.primera.publisher import PrimeraPublisher


def test_diacritics_kept_where_the_code_page_has_them():
    assert encoding.fit_text("MÜLLER^HANS", "cp1252") == "MÜLLER^HANS"
    assert encoding.fit_text("MÜLLER^HANS", "ascii") == "MULLER^HANS"
    assert encoding.fit_text("Dvořák", "cp1252") == "Dvorák"  # ř is not in cp1252 (loses its mark), á is
    assert encoding.fit_text("Dvořák", "cp1250") == "Dvořák"
    assert encoding.fit_text("Łódź", "ascii") == "odz"  # Ł has no decomposition: left out


def test_another_script_becomes_the_patient_id():
    fields = {"patient_name": "山田^太郎", "patient_id": "P77", "institution": "Klinik Süd 東京"}
    assert encoding.fit_fields(fields, "cp1252") == {"patient_name": "P77", "patient_id": "P77",
                                                     "institution": "Klinik Süd"}
    assert encoding.fit_fields(fields, "ascii")["institution"] == "Klinik Sud"
    assert encoding.fit_fields(fields, "cp932")["patient_name"] == "山田^太郎"  # a Japanese host holds it


def test_codepage_setting_checked_with_a_clear_message():
    assert encoding.check_codepage("CP1252") == "cp1252"
    assert encoding.check_codepage("shift_jis") == "shift_jis"
    for bad, words in (("klingon", "not a code page"), ("utf-8", "never UTF"), ("utf-16", "never UTF"),
                       ("rot13", "not a text code page"), ("cp037", "not ASCII-compatible")):
        with pytest.raises(ValueError, match=words):
            encoding.check_codepage(bad)
    base = {"name": "r1", "driver": "epson", "spool": "/tmp/spool"}
    assert "encoding" not in validate_robot(base)  # the vendor default applies
    assert validate_robot({**base, "encoding": "cp932"})["encoding"] == "cp932"
    with pytest.raises(SettingError, match="robot encoding 'utf-8'.*never UTF"):
        validate_robot({**base, "encoding": "utf-8"})


def test_vendor_defaults_and_strict_encoding(tmp_path):
    spool = tmp_path / "spool"
    robot = {"name": "r", "spool": str(spool)}
    assert EpsonPublisher(robot).encoding == "cp1252"
    assert PrimeraPublisher(robot).encoding == "ascii"
    assert EpsonPublisher({**robot, "encoding": "cp932"}).encoding == "cp932"
    # what cannot be written is refused, never a silent "?"
    with pytest.raises(ValueError, match="cannot be written in the robot's code page ascii"):
        write_aside_then_rename(spool, "X.JRQ", "ImageFile=/spool/Müller/disc.iso\r\n", "ascii")
    assert not (spool / "X.JRQ").exists()
    write_aside_then_rename(spool, "X.JDF", "VOLUME_LABEL=MÜLLER\r\n", "cp1252")
    assert (spool / "X.JDF").read_bytes() == b"VOLUME_LABEL=M\xdcLLER\r\n"  # one byte, no BOM


def _disc(tmp_path: Path, name: str) -> publish.DiscImage:
    image = tmp_path / "disc.iso"
    image.write_bytes(b"\0" * 4096)
    return publish.DiscImage(image=image, tree=tmp_path, media="CD", filesystem="JOLIET", volume_label="VOL",
                             size=4096, label_fields={"patient_name": name, "patient_id": "P9"})


@pytest.mark.parametrize("name, epson, primera", [
    ("MÜLLER^HANS", "MÜLLER^HANS", "MULLER^HANS"),
    ("山田^太郎", "P9", "P9"),
])
def test_merge_fields_in_the_job_files(tmp_path, name, epson, primera):
    e_spool, p_spool = tmp_path / "e", tmp_path / "p"
    EpsonPublisher({"name": "e", "spool": str(e_spool), "label_template": "C:\\d\\burnstation.tdd"}).submit(
        publish.PublishRequest(job_id="J1", discs=[_disc(tmp_path, name)]))
    merge = (e_spool / "J1_FIELDS.TXT").read_bytes().decode("cp1252")  # decodes strictly: cp1252 text
    assert merge.startswith(f"patient_name={epson}\r\n")
    assert dict(jdf.parse_jdf((e_spool / "J1.JDF").read_bytes().decode("cp1252")))["REPLACE_FIELD"]
    PrimeraPublisher({"name": "p", "spool": str(p_spool), "label_template": "C:\\d\\burnstation.std"}).submit(
        publish.PublishRequest(job_id="J1", discs=[_disc(tmp_path, name)]))
    pairs = jrq.parse_jrq((p_spool / "J1.JRQ").read_bytes().decode("ascii"))
    assert [v for k, v in pairs if k == "MergeField"][:2] == [primera, "P9"]
    assert dict(pairs)["PrintLabel"] == "C:\\d\\burnstation.std"
