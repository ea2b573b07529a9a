"""The disc image file: ISO 9660 + Joliet for CD, UDF 2.60 (with an ISO 9660 bridge) for DVD and BD.

Written with pycdlib. Files are added by path (`add_file`): pycdlib opens each one only while it
writes the image and copies it in blocks, so a 25 GB BD costs no more memory than a CD. The staged
tree must already use ISO 9660 level 1 names (≤ 8 characters, A–Z 0–9 _, extension ≤ 3); the
builder only creates such names, and anything else is refused here rather than renamed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pycdlib

from appliance.burn.catalog import BuildError

CD_FILESYSTEM = "ISO9660+JOLIET"
UDF_FILESYSTEM = "UDF"
_DIR_NAME = re.compile(r"[A-Z0-9_]{1,8}")
_FILE_NAME = re.compile(r"[A-Z0-9_]{1,8}(\.[A-Z0-9_]{1,3})?")
COPY_BLOCK = 1024 * 1024


def filesystem_for(media: str) -> str:
    return CD_FILESYSTEM if media == "CD" else UDF_FILESYSTEM


def _iso_file(name: str) -> str:
    return f"{name};1" if "." in name else f"{name}.;1"


def make_image(tree: Path, image: Path, media: str, volume_label: str, publisher: str = "BurnStation") -> str:
    """Write `image` from the staged `tree`; returns the file system name (CD_FILESYSTEM or UDF_FILESYSTEM)."""
    filesystem = filesystem_for(media)
    if not re.fullmatch(r"[A-Z0-9_]{1,32}", volume_label):
        raise BuildError(f"volume label {volume_label!r} is not ISO 9660 d-characters (A-Z, 0-9, _), 1-32")
    iso = pycdlib.PyCdlib()
    if filesystem == CD_FILESYSTEM:
        iso.new(interchange_level=1, vol_ident=volume_label, joliet=3, app_ident_str=publisher[:128])
    else:
        iso.new(interchange_level=1, vol_ident=volume_label, udf="2.60", app_ident_str=publisher[:128])
    try:
        for dirpath, dirnames, filenames in os.walk(tree):
            dirnames.sort()
            rel = Path(dirpath).relative_to(tree)
            parts = [] if str(rel) == "." else list(rel.parts)
            if parts:
                if not _DIR_NAME.fullmatch(parts[-1]):
                    raise BuildError(f"not an ISO 9660 directory name: {'/'.join(parts)}")
                path = "/" + "/".join(parts)
                if filesystem == CD_FILESYSTEM:
                    iso.add_directory(path, joliet_path=path)
                else:
                    iso.add_directory(path, udf_path=path)
            for name in sorted(filenames):
                if not _FILE_NAME.fullmatch(name):
                    raise BuildError(f"not an ISO 9660 file name: {'/'.join(parts + [name])}")
                plain = "/" + "/".join(parts + [name])
                iso_path = "/" + "/".join(parts + [_iso_file(name)])
                source = os.path.join(dirpath, name)
                if filesystem == CD_FILESYSTEM:
                    iso.add_file(source, iso_path=iso_path, joliet_path=plain)
                else:
                    iso.add_file(source, iso_path=iso_path, udf_path=plain)
        tmp = image.with_name(image.name + ".tmp")
        iso.write(str(tmp), blocksize=COPY_BLOCK)
        tmp.replace(image)
    finally:
        iso.close()
    return filesystem

