"""Hostile and international patient names on a disc: right in every character set, harmless in
INDEX.HTM, the IHE_PDI pages (well-formed XHTML), README.TXT, the label and all file names."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from support import write_study

from appliance.burn import label
from appliance.burn.builder import BuildOptions, build_discs, verify_tree

XHTML = "{http://www.w3.org/1999/xhtml}"
ISO_NAME = re.compile(r"[A-Z0-9_]{1,8}(\.[A-Z0-9_]{1,3})?")

# (DICOM PN value, Specific Character Set, what a reader must see)
NAMES = [
    ("<script>alert(1)</script>", None, "<script>alert(1)</script>"),
    ("../../etc^passwd", None, "../../etc, passwd"),
    ("Line\nBreak^Tab\tHere", None, "Line Break, Tab Here"),
    ("Müller^Jürgen", "ISO_IR 100", "Müller, Jürgen"),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"], "Yamada, Tarou / 山田 太郎 / やまだ たろう"),
    ("Διονυσιος^Αλεξανδρος", "ISO_IR 126", "Διονυσιος, Αλεξανδρος"),
    ("Ωmega&amp;\"quote'^O", "ISO_IR 192", "Ωmega&amp;\"quote', O"),
]


def page_text(path: Path) -> str:
    """All text of a page, parsed as XML (which fails on anything not well-formed)."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{XHTML}html"
    return " ".join("".join(root.itertext()).split())


def test_hostile_and_international_names(tmp_path: Path) -> None:
    paths = []
    for n, (name, charset, _) in enumerate(NAMES):
        paths += write_study(tmp_path / f"in{n}", n_series=1, per_series=1, patient_name=name, charset=charset,
                             patient_id=f"ID<{n}>/..", study_description=f"<b>desc {n}</b>\r\n",
                             series_description="../../../x\x07")
    for path, (name, _, _) in zip(paths, NAMES, strict=True):  # the files hold what we meant
        assert str(dcmread(path).PatientName) == name
    discs = build_discs([{"path": str(p)} for p in paths], tmp_path / "work",
                        BuildOptions("names", ["CD"], institution="Klinik <Süd> & Co", department="Rad\nIO"))
    disc = discs[0]
    tree = disc.tree

    for path in tree.rglob("*"):  # names are counters, never the patients' words
        assert ISO_NAME.fullmatch(path.name), path
    assert {p.name for p in tree.iterdir()} == {"DICOM", "DICOMDIR", "IHE_PDI", "INDEX.HTM", "README.TXT", "MANIFEST.SHA"}
    assert re.fullmatch(r"[A-Z0-9_]{1,16}", disc.volume_label)

    pages = [tree / "INDEX.HTM", *sorted((tree / "IHE_PDI").glob("*.HTM"))]
    assert len(pages) == 2 + len(NAMES)
    index_text = page_text(tree / "INDEX.HTM")
    pdi_text = page_text(tree / "IHE_PDI" / "INDEX.HTM")
    for _, _, shown in NAMES:
        assert shown in index_text and shown in pdi_text, shown
    assert "Klinik <Süd> & Co · Rad IO" in index_text and "Klinik <Süd> & Co · Rad IO" in pdi_text
    for page in pages:
        raw = page.read_text(encoding="utf-8")
        page_text(page)  # well-formed
        root = ET.parse(page).getroot()
        assert not list(root.iter(f"{XHTML}script")) and not list(root.iter(f"{XHTML}b"))  # nothing became markup
        assert "<script>" not in raw and "&lt;script&gt;" in raw or page.name.startswith("S")
        for element in root.iter(f"{XHTML}a"):  # links only to pages of the disc
            assert re.fullmatch(r"(IHE_PDI/|\.\./)?[A-Z0-9_]{1,8}\.(HTM|TXT)", element.get("href", "")), element.get("href")
        for element in root.iter(f"{XHTML}img"):
            assert re.fullmatch(r"S\d{5}_\d\.JPG", element.get("src", ""))
    series_page = page_text(sorted((tree / "IHE_PDI").glob("S*.HTM"))[0])
    assert "../../../x" in series_page and "\x07" not in series_page

    readme = (tree / "README.TXT").read_text(encoding="utf-8")
    for _, _, shown in NAMES:
        assert f"Patient: {shown} (" in readme, shown
    lines = readme.split("\r\n")
    assert not any(line.startswith(("Break", "Tab", "Here", "IO")) for line in lines)  # no injected lines
    assert "Department: Rad IO" in readme

    fields = disc.label_fields
    for key, value in fields.items():
        assert not re.search(r"[\x00-\x1f\x7f]", value), key
    for _, _, shown in NAMES:
        assert shown in fields["patient_name"]
    image = Image.open(disc.label_image)
    assert image.size == (label.SIZE, label.SIZE) and image.mode == "RGBA"
    alpha = np.asarray(image)[..., 3]
    assert alpha[0, 0] == 0 and alpha[label.SIZE // 2, label.SIZE // 2] == 0  # round, with a hub hole
    assert alpha[label.SIZE // 2, 40] == 255

    assert verify_tree(tree) == []
    # the DICOMDIR keeps each patient's name in its own character set, and is valid
    check = subprocess.run(["/usr/bin/dciodvfy", str(tree / "DICOMDIR")], capture_output=True, text=True)
    assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]
    names = {str(r.PatientName) for r in dcmread(tree / "DICOMDIR").DirectoryRecordSequence
             if r.DirectoryRecordType == "PATIENT"}
    assert names == {name.replace("\n", " ").replace("\t", " ") for name, _, _ in NAMES}
    listing = subprocess.run(["xorriso", "-indev", str(disc.image), "-find", "/"], capture_output=True, text=True,
                             check=True).stdout
    for line in listing.splitlines():
        assert ISO_NAME.fullmatch(line.strip().strip("'").rsplit("/", 1)[-1] or "ROOT"), line


def test_label_draws_each_script_with_a_font_that_has_it(tmp_path: Path) -> None:
    assert label.font_file("latin")
    cjk = label.font_file("cjk")
    assert cjk, "no CJK font installed (Makefile DEBS has fonts-droid-fallback)"
    from PIL import ImageFont

    font = ImageFont.truetype(cjk, 48)
    masks = {ch: bytes(font.getmask(ch)) for ch in "山田太郎"}
    assert len(set(masks.values())) == 4  # four different glyphs, not four "missing glyph" boxes
    latin = ImageFont.truetype(label.font_file("latin"), 48)
    assert len({bytes(latin.getmask(ch)) for ch in "ΑΒΓü"}) == 4
    assert [k for k, _ in label._runs("Yamada 山田 Ü", bold=False)] == ["latin", "cjk", "latin"]
    out = label.render_label({"patient_name": "山田 太郎 / Müller / Διονυσιος", "disc_of": "1 of 2"}, tmp_path / "l.png")
    assert Image.open(out).getbbox()
