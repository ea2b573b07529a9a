"""JPEG previews of a series for the IHE_PDI web pages ("DICOM PLUS WEB").

A few representative images per series (evenly spaced instances, or first/middle/last frame of a
multi-frame object), each read alone (pydicom reads just the one frame), windowed for display:
the file's own VOI window when it has one, else a modality default (CT soft tissue) or the
0.5–99.5 percentile range; MONOCHROME1 is inverted; colour (RGB, YBR, palette) stays colour.
A file that cannot be rendered (no pixels, unknown codec) simply has no preview.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, pixel_array

from appliance.burn.catalog import InstanceInfo

log = logging.getLogger(__name__)
MAX_SIDE = 512
CT_DEFAULT_WINDOW = (40.0, 400.0)


def representative(instances: Sequence[InstanceInfo], count: int = 4) -> list[tuple[InstanceInfo, int | None]]:
    """(instance, frame index or None) pairs that show the series: spread over its images."""
    images = [i for i in instances if i.rows and i.columns]
    if not images:
        return []
    if len(images) == 1 and images[0].frames > 1:
        frames = images[0].frames
        picks = sorted({0, frames // 2, frames - 1})
        return [(images[0], f) for f in picks]
    if len(images) <= count:
        picks = list(range(len(images)))
    else:
        picks = sorted({round(k * (len(images) - 1) / (count - 1)) for k in range(count)})
    return [(images[p], 0 if images[p].frames > 1 else None) for p in picks]


def _first(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            value = value[0]  # type: ignore[index]
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, IndexError):
        return None


def to_display(arr: np.ndarray, ds: Dataset, modality: str = "") -> Image.Image:
    """8-bit greyscale or RGB image of one frame, windowed for viewing (`ds`: its group 0028 elements)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        scale = 255.0 / max(1, int(rgb.max()))
        return Image.fromarray(np.clip(rgb * scale, 0, 255).astype(np.uint8), "RGB")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour (pydicom gives RGB for YBR)
        rgb = arr[..., :3]
        if rgb.dtype != np.uint8:
            bits = int(ds.get("BitsStored", 8) or 8)
            rgb = np.clip(rgb.astype(np.float64) * 255.0 / (2 ** bits - 1), 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    values = arr.astype(np.float32)
    slope, intercept = _first(ds.get("RescaleSlope")), _first(ds.get("RescaleIntercept"))
    if slope not in (None, 1.0):
        values *= slope
    if intercept:
        values += intercept
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        if modality == "CT" and "RescaleIntercept" in ds:
            center, width = CT_DEFAULT_WINDOW
        else:
            low, high = np.percentile(values, (0.5, 99.5))
            if high <= low:
                low, high = float(values.min()), float(values.max()) + 1
            center, width = (low + high) / 2, high - low
    low = center - 0.5 - (width - 1) / 2
    out = np.clip((values - low) / max(width - 1, 1) * 255.0, 0, 255)
    if photometric == "MONOCHROME1":
        out = 255.0 - out
    return Image.fromarray(out.astype(np.uint8), "L")


def display_image(info: InstanceInfo, frame: int | None) -> Image.Image:
    """One frame (None: a single-frame object) windowed for viewing; raises when it cannot be shown.
    Shared by the disc previews and the portal's JPEG zip, so both look the same."""
    ds = Dataset()
    arr = pixel_array(info.path, ds_out=ds, index=frame)
    if arr.ndim == 3 and frame is None and arr.shape[-1] not in (3, 4):
        arr = arr[0]
    return to_display(arr, ds, info.modality)  # pydicom fills ds_out with group 0028 only


def render_one(info: InstanceInfo, frame: int | None, out: Path) -> bool:
    """Write one JPEG preview; False when this object cannot be shown."""
    try:
        image = display_image(info, frame)
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        tmp = out.with_name(out.name + ".tmp")
        image.save(tmp, "JPEG", quality=85)
        tmp.replace(out)
        return True
    except Exception as exc:  # any codec or data problem: no preview, the DICOM is still on the disc
        log.info("no preview for %s: %s", info.path.name, exc)
        return False


def render_series(instances: Sequence[InstanceInfo], out_dir: Path, stem: str) -> list[Path]:
    """Previews of one series as out_dir/<stem>_<n>.JPG (stem ≤ 6 characters keeps ISO 9660 8.3)."""
    written = []
    for n, (info, frame) in enumerate(representative(instances), 1):
        out = out_dir / f"{stem}_{n}.JPG"
        if render_one(info, frame, out):
            written.append(out)
    return written
