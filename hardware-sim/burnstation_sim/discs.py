"""What "burning" checks: the image must be a real ISO 9660 / Joliet / UDF image with a DICOMDIR
at its root (read with pycdlib), or, in data mode, the sources must put a DICOMDIR at the root."""

from __future__ import annotations

import shutil
from pathlib import Path

import pycdlib

MEDIA_CAPACITY = {  # bytes of user data (same figures as the station uses)
    "CD": 700 * 1000 * 1000,
    "DVD": 4_700 * 1000 * 1000,
    "DVD-DL": 8_500 * 1000 * 1000,
    "BD": 25_000 * 1000 * 1000,
    "BD-DL": 50_000 * 1000 * 1000,
}
MEDIA_ORDER = ("CD", "DVD", "DVD-DL", "BD", "BD-DL")


def _dicomdir_name(name: str) -> bool:
    return name.split(";")[0].rstrip(".").upper() == "DICOMDIR"


def check_image(image: Path) -> str | None:
    """None when the image opens as ISO 9660 / Joliet / UDF and holds a DICOM file named DICOMDIR
    at its root; otherwise the reason it would not make a valid disc."""
    if not image.is_file():
        return f"image file not found: {image}"
    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(image))
    except Exception as exc:  # pycdlib raises its own exception types and sometimes plain ones
        return f"not an ISO 9660/UDF image: {exc}"
    try:
        facades: list[tuple[str, str]] = [("iso_path", "/")]
        if iso.has_joliet():
            facades.append(("joliet_path", "/"))
        if iso.has_udf():
            facades.append(("udf_path", "/"))
        for kind, root in facades:
            for child in iso.list_children(**{kind: root}):
                if child is None or not child.is_file():
                    continue
                raw = child.file_identifier()
                name = raw.decode("utf-16-be", "replace") if kind == "joliet_path" else raw.decode("latin-1")
                if not _dicomdir_name(name):
                    continue
                with iso.open_file_from_iso(**{kind: "/" + name}) as fh:
                    head = fh.read(132)
                if len(head) == 132 and head[128:132] == b"DICM":
                    return None
                return "DICOMDIR on the image is not a DICOM Part 10 file"
        return "no DICOMDIR at the root of the image"
    except Exception as exc:
        return f"image unreadable: {exc}"
    finally:
        iso.close()


def check_tree(root: Path) -> str | None:
    """The data-mode equivalent of `check_image` for a staged disc tree."""
    dicomdir = root / "DICOMDIR"
    if not dicomdir.is_file():
        return "no DICOMDIR at the root of the disc data"
    with open(dicomdir, "rb") as fh:
        head = fh.read(132)
    if head[128:132] != b"DICM":
        return "DICOMDIR in the disc data is not a DICOM Part 10 file"
    return None


def stage_data(sources: list[tuple[Path, str]], target: Path) -> None:
    """Copy DATA sources to `target` as the disc would hold them: a folder's contents go to the
    destination folder, a file goes to the destination (a folder when it ends in / or is empty)."""
    target.mkdir(parents=True, exist_ok=True)
    for source, destination in sources:
        dest = (target / destination.strip("/\\")).resolve()
        if not dest.is_relative_to(target.resolve()):
            raise ValueError(f"destination outside the disc: {destination}")
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        else:
            if destination == "" or destination.endswith(("/", "\\")) or dest.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                dest = dest / source.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
