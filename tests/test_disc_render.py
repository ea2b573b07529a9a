"""Previews for the IHE_PDI pages: windowing, MONOCHROME1, colour, multi-frame; and the media plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from support import make_dataset

from appliance.burn import media, render
from appliance.burn.catalog import ELE, catalog


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(ds: Dataset, low: int, high: int) -> Dataset:
    """Left half `low`, right half `high` (stored values)."""
    arr = np.full((ds.Rows, ds.Columns), low, dtype=np.uint16)
    arr[:, ds.Columns // 2:] = high
    ds.PixelData = arr.tobytes()
    return ds


def preview(tmp_path: Path, ds: Dataset, name: str) -> Image.Image:
    path = save(ds, tmp_path / f"{name}.dcm")
    info = catalog([{"path": str(path)}])[0]
    shots = render.render_series([info], tmp_path, name.upper()[:6])
    assert len(shots) == 1
    return Image.open(shots[0])


def test_ct_window_from_file_and_default(tmp_path: Path) -> None:
    # stored 1024 / 1104 → HU 0 / 80 with intercept -1024; file window 40/400 → mid grey, a bit brighter
    ct = ramp(make_dataset(modality="CT", rows=64, cols=64), 1024, 1104)
    img = np.asarray(preview(tmp_path, ct, "ct").convert("L"), dtype=int)
    left, right = img[32, 8], img[32, 56]
    assert 100 < left < 140 and 150 < right < 190, (left, right)
    narrow = ramp(make_dataset(modality="CT", rows=64, cols=64), 1024, 1104)
    narrow.WindowCenter, narrow.WindowWidth = 40, 80  # 0 HU is black, 80 HU white
    img = np.asarray(preview(tmp_path, narrow, "narrow").convert("L"), dtype=int)
    assert img[32, 8] < 10 and img[32, 56] > 245
    nowin = ramp(make_dataset(modality="CT", rows=64, cols=64), 1024, 1104)
    del nowin.WindowCenter, nowin.WindowWidth  # CT default 40/400 applies
    img = np.asarray(preview(tmp_path, nowin, "nowin").convert("L"), dtype=int)
    assert 100 < img[32, 8] < 140 and 150 < img[32, 56] < 190


def test_mr_without_window_uses_its_range_and_monochrome1_is_inverted(tmp_path: Path) -> None:
    mr = ramp(make_dataset(modality="MR", rows=64, cols=64), 100, 900)
    img = np.asarray(preview(tmp_path, mr, "mr").convert("L"), dtype=int)
    assert img[32, 8] < 15 and img[32, 56] > 240
    cr = ramp(make_dataset(modality="CR", rows=64, cols=64, photometric="MONOCHROME1"), 100, 900)
    img = np.asarray(preview(tmp_path, cr, "mono1").convert("L"), dtype=int)
    assert img[32, 8] > 240 and img[32, 56] < 15  # low values are white in MONOCHROME1


def test_colour_and_multiframe(tmp_path: Path) -> None:
    rgb = make_dataset(modality="OT", rows=32, cols=32, photometric="RGB")
    arr = np.zeros((32, 32, 3), dtype=np.uint8)
    arr[..., 0] = 250  # red
    rgb.PixelData = arr.tobytes()
    img = preview(tmp_path, rgb, "rgb")
    assert img.mode == "RGB"
    r, g, b = img.getpixel((16, 16))
    assert r > 200 and g < 40 and b < 40

    multi = make_dataset(modality="MR", rows=32, cols=32, frames=7)
    frames = np.stack([np.full((32, 32), 100 * (f + 1), dtype=np.uint16) for f in range(7)])
    frames[:, :, :4] = 0  # a dark strip so each frame has a range
    multi.PixelData = frames.tobytes()
    path = save(multi, tmp_path / "multi.dcm")
    info = catalog([{"path": str(path)}])[0]
    assert info.frames == 7
    picks = render.representative([info])
    assert [f for _, f in picks] == [0, 3, 6]
    shots = render.render_series([info], tmp_path, "MULTI")
    assert [s.name for s in shots] == ["MULTI_1.JPG", "MULTI_2.JPG", "MULTI_3.JPG"]


def test_many_instances_get_a_few_evenly_spaced_previews_and_broken_ones_none(tmp_path: Path) -> None:
    paths = [save(make_dataset(instance_number=i + 1, rows=16, cols=16, study_uid="1.2.3", series_uid="1.2.3.4"), tmp_path / f"{i}.dcm")
             for i in range(20)]
    infos = catalog([{"path": str(p)} for p in paths])
    picks = render.representative(infos)
    assert [i.instance_number for i, _ in picks] == [1, 7, 14, 20]
    infos[0].rows = 0  # an object without pixels: no preview, no error
    assert render.representative(infos[:1]) == []
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(paths[1].read_bytes()[:-500])  # pixel data cut short
    assert render.render_one(catalog([{"path": str(broken)}])[0], None, tmp_path / "B.JPG") is False


def test_media_plan(tmp_path: Path) -> None:
    jpeg = make_dataset(rows=100, cols=100)
    path = save(jpeg, tmp_path / "a.dcm")
    info = catalog([{"path": str(path)}])[0]
    info.transfer_syntax = "1.2.840.10008.1.2.4.70"  # as if JPEG lossless: CD decompresses, DVD keeps
    assert media.output_syntax(info.transfer_syntax, "CD") == ELE
    assert media.output_syntax(info.transfer_syntax, "DVD") == info.transfer_syntax
    assert media.output_syntax("1.2.840.10008.1.2.4.50", "DVD") == ELE
    assert media.instance_bytes(info, "CD") >= info.pixel_bytes
    plans = media.plan_discs([info], ["CD", "DVD"])
    assert [p.media for p in plans] == ["CD"]
    assert media.profile("CD") == "STD-GEN-CD" and media.profile("BD") == "STD-GEN-DVD-JPEG"
