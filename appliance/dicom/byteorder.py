"""Big endian → little endian for a dataset read from an Explicit VR Big Endian file, by VR.

pydicom decodes numbers and text by the file's byte order but keeps OB/OW/OL/OF/OD/OV values as the
raw bytes of the file, and writes them back as they are. Changing the byte order (the disc builder's
transcoding to Explicit VR Little Endian, a C-STORE to a peer that only takes little endian) must
swap those bytes by the VR's word size, whatever the element holds (PS3.5 6.2): OW per 16-bit word
(16- and 32-bit pixels, 8-bit pixels packed two to a word, 1-bit overlay data, LUT data alike),
OL/OF per 32 bits, OD/OV per 64 bits; OB has no byte order. Bits Allocated plays no part.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

WORD_SIZE = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


class ByteOrderError(ValueError):
    """A value that cannot be swapped faithfully (its length is not a whole number of words)."""


def is_big_endian(ds: Dataset) -> bool:
    """True when `ds` was read from a big endian encoding (its binary values are big endian)."""
    return ds.original_encoding[1] is False


def swap_to_little_endian(ds: Dataset) -> None:
    """Turn the big endian binary values of `ds` (and of its sequences' items) into little endian,
    in place, and mark the dataset as little endian (pydicom and pynetdicom then write it as such).
    A dataset that is not big endian is left alone. ByteOrderError: a value that cannot be swapped
    faithfully; `ds` is then unchanged."""
    if not is_big_endian(ds):
        return
    swapped: list[tuple[object, bytes]] = []
    datasets = [ds]
    for element in ds.iterall():
        if element.VR == "SQ":
            datasets.extend(element.value)
        vr = str(element.VR or "")
        if " or " in vr and any(v in WORD_SIZE for v in vr.split(" or ")):
            raise ByteOrderError(f"{element.keyword or element.tag}: VR {vr!r} is ambiguous; its byte order "
                                 "cannot be changed")
        size = WORD_SIZE.get(vr)
        if not size or not isinstance(element.value, bytes | bytearray) or not element.value:
            continue
        value = bytes(element.value)
        if len(value) % size:
            raise ByteOrderError(f"{element.keyword or element.tag} ({vr}): {len(value)} bytes is not a whole "
                                 f"number of {size}-byte words")
        swapped.append((element, np.frombuffer(value, dtype=f">u{size}").astype(f"<u{size}").tobytes()))
    for element, value in swapped:
        element.value = value  # type: ignore[attr-defined]
    for item in datasets:
        item.set_original_encoding(item.original_encoding[0], True)
