"""One burn job → one or more finished IHE PDI discs (staged tree, image file, label).

`build_discs` is the whole disc builder as the burner sees it: catalogue the instances (headers
only), choose the media and split (media.py), then per disc stage DICOM/ and the DICOMDIR (pdi.py),
render previews (render.py), write the pages and README (webpages.py), the label (label.py), the
SHA-256 manifest (manifest.py) and the image (discimage.py). Files are streamed or hard-linked,
one at a time: nothing holds the study in memory.

Layout of `work_dir` (owned by the builder; a rebuild replaces it):
  disc01/tree/        the disc as files (data mode, folder export)
  disc01/<job>-1.iso  the image (absent when make_image is False)
  disc01/<job>-1.png  the label
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.burn import discimage, label, manifest, media, pdi, render, webpages
from appliance.burn.catalog import BuildError, catalog
from appliance.burn.text import ascii_label
from appliance.publish import DiscImage

log = logging.getLogger(__name__)
__all__ = ["BuildError", "BuildOptions", "build_discs", "verify_tree"]
verify_tree = manifest.verify_tree


@dataclass
class BuildOptions:
    job_id: str
    allowed_media: list[str]  # subset of publish.MEDIA_ORDER, smallest first
    capacity: dict[str, int] | None = None  # override publish.MEDIA_CAPACITY (tests use tiny values)
    institution: str = ""
    department: str = ""
    creator: str = "BurnStation"
    make_image: bool = True  # False: staged tree only (data mode / folder export)
    token_links: dict[str, str] = field(default_factory=dict)  # study UID → patient portal link (QR on label)


def _safe_job(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", job_id)[:32] or "job"


VOLUME_LABEL_MAX = 16  # Joliet stores the label in UTF-16 in 32 bytes; UDF and Windows show the same


def volume_label(patients: Sequence[webpages.PatientEntry], number: int, count: int) -> str:
    """ISO 9660 volume label: first patient's family name and study date, + "_1OF2" when split."""
    suffix = f"_{number}OF{count}" if count > 1 else ""
    family = patients[0].name.split(",")[0].split("/")[0] if patients else ""
    date = patients[0].studies[0].date if patients and patients[0].studies else ""
    date_part = ascii_label(date, limit=8, default="")
    room = VOLUME_LABEL_MAX - len(suffix) - (len(date_part) + 1 if date_part else 0)
    base = "_".join(p for p in (ascii_label(family, limit=max(room, 1), default="DICOM"), date_part) if p)
    return base[: VOLUME_LABEL_MAX - len(suffix)] + suffix


def _tree_size(tree: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(tree) for f in files)


class _Laps:
    """Wall time per build phase, for the log (where does a slow build spend its time)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.laps: list[str] = []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append(f"{name} {now - self.last:.2f}s")
        self.last = now


def build_one(plan: media.DiscPlan, disc_dir: Path, options: BuildOptions, created: dt.datetime,
              capacity: int) -> DiscImage:
    laps = _Laps()
    if disc_dir.exists():
        shutil.rmtree(disc_dir)
    tree = disc_dir / "tree"
    tree.mkdir(parents=True)
    patients = webpages.group(plan.instances)
    vol = volume_label(patients, plan.number, plan.count)
    # DICOM files are hashed in a thread (hashlib and file reads release the GIL) while this thread
    # stages the rest, renders previews and writes the pages
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="disc-hash") as pool:
        hashing: dict[str, Future[str]] = {}

        def hash_later(path: Path) -> None:
            hashing[path.relative_to(tree).as_posix()] = pool.submit(manifest.sha256_file, path)

        staged = pdi.stage_dicom(plan.instances, tree, plan.media, vol[:16], on_file=hash_later)
        off_profile = pdi.off_profile_notes(staged, plan.media)
        for note in off_profile:
            log.warning("job %s disc %s: %s", options.job_id, plan.number, note)
        laps.lap("DICOM+DICOMDIR")
        (tree / "IHE_PDI").mkdir()
        for patient in patients:
            for study in patient.studies:
                for series in study.series:
                    stem = series.page.removesuffix(".HTM")
                    series.previews = [p.name for p in render.render_series(series.instances, tree / "IHE_PDI", stem)]
        laps.lap("previews")
        studies = dict.fromkeys(i.study_uid for i in plan.instances)  # the disc's studies, in disc order
        links = [options.token_links[s] for s in studies if s in options.token_links]
        fields = label.label_fields(patients, institution=options.institution, department=options.department,
                                    creator=options.creator, disc_number=plan.number, disc_count=plan.count,
                                    media=plan.media, created=created, token_link=" ".join(links) or None)
        fields["volume_label"] = vol
        notes = [*plan.notes, *off_profile]
        webpages.write_pages(tree, patients, fields, notes)
        webpages.write_readme(tree, patients, fields, notes, media.profile(plan.media))
        laps.lap("pages")
        stem = f"{_safe_job(options.job_id)}-{plan.number}"
        label_png = label.render_label(fields, disc_dir / f"{stem}.png")
        laps.lap("label")
        digests = {rel: future.result() for rel, future in hashing.items()}
        laps.lap("hashing (rest)")
    manifest.write_manifest(tree, digests)
    laps.lap("manifest")
    image = disc_dir / f"{stem}.iso"
    filesystem = discimage.filesystem_for(plan.media)
    if options.make_image:
        discimage.make_image(tree, image, plan.media, vol, publisher=options.creator or "BurnStation")
        size = image.stat().st_size
        laps.lap("image")
    else:
        size = _tree_size(tree)
    if size > capacity:
        raise BuildError(f"disc {plan.number} came out at {size} bytes, more than a {plan.media} "
                         f"({capacity} bytes); the size estimate was wrong for this content")
    log.info("disc %s of %s: %s, %s, %d instances, %d bytes (%s)", plan.number, plan.count, plan.media, vol,
             len(plan.instances), size, ", ".join(laps.laps))
    return DiscImage(image=image, tree=tree, media=plan.media, filesystem=filesystem, volume_label=vol,
                     size=size, label_image=label_png, label_fields=fields, disc_number=plan.number,
                     disc_count=plan.count, off_profile=off_profile)


def build_discs(instances: Sequence[Mapping[str, Any]], work_dir: Path, options: BuildOptions) -> list[DiscImage]:
    """Build every disc of one job under `work_dir` (see the module docstring for the layout).

    `instances` are rows of index.instances (at least `path`). Raises BuildError with a message for
    the technician when the job cannot be built (missing file, no media, an instance too big).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    infos = catalog(instances)
    plans = media.plan_discs(infos, options.allowed_media, options.capacity)
    caps = media.capacities(options.capacity)
    created = dt.datetime.now()
    for old in work_dir.glob("disc[0-9][0-9]"):  # a rebuild must not leave discs of an earlier plan
        if int(old.name[4:]) > len(plans):
            shutil.rmtree(old)
    return [build_one(plan, work_dir / f"disc{plan.number:02d}", options, created, caps[plan.media])
            for plan in plans]
