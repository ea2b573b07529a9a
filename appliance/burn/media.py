"""Which media a job needs, what each media may carry, and how a job too big for one disc is split.

Rules (IHE PDI / PS3.11 application profiles):
- CD (STD-GEN-CD): Explicit VR Little Endian only; anything else is transcoded.
- DVD and larger (STD-GEN-DVD-JPEG): JPEG lossless is kept as received; other syntaxes → ELE.
- The smallest allowed media that holds the whole job wins. A job larger than the largest allowed
  media is split over several discs of that media: between studies first, then between series,
  and only as a last resort (one series larger than a disc) between instances.
Sizes are estimates made before anything is copied: file sizes (uncompressed size where a file
will be transcoded), rounded to 2 KiB sectors, plus room for DICOMDIR records, previews, pages and
file-system structures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby

from appliance import publish
from appliance.burn.catalog import ELE, BuildError, InstanceInfo

JPEG_LOSSLESS = ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
SECTOR = 2048
FIXED_OVERHEAD = 1024 * 1024  # volume descriptors, root pages, README, manifest header, label slack
PER_FILE_OVERHEAD = 2 * SECTOR  # directory records (ISO + Joliet/UDF), DICOMDIR record, manifest line
PER_SERIES_OVERHEAD = 400 * 1024  # up to 4 JPEG previews and one XHTML page


def profile(media: str) -> str:
    """The DICOM media application profile a disc of this media follows."""
    return "STD-GEN-CD" if media == "CD" else "STD-GEN-DVD-JPEG"


def output_syntax(transfer_syntax: str, media: str) -> str:
    """The transfer syntax an instance has on `media`."""
    if transfer_syntax == ELE:
        return ELE
    if media != "CD" and transfer_syntax in JPEG_LOSSLESS:
        return transfer_syntax
    return ELE


def _sectors(n: int) -> int:
    return -(-n // SECTOR) * SECTOR


def instance_bytes(info: InstanceInfo, media: str) -> int:
    """Estimated bytes the instance takes on `media` (after transcoding), whole sectors."""
    if output_syntax(info.transfer_syntax, media) == info.transfer_syntax:
        size = info.size
    else:  # decompressed: header + raw pixels (never less than the file as received)
        size = max(info.size + info.size // 16, info.pixel_bytes + 16 * 1024)
    return _sectors(size) + PER_FILE_OVERHEAD


def disc_bytes(infos: Sequence[InstanceInfo], media: str) -> int:
    series = {i.series_uid for i in infos}
    return FIXED_OVERHEAD + PER_SERIES_OVERHEAD * len(series) + sum(instance_bytes(i, media) for i in infos)


@dataclass
class DiscPlan:
    media: str
    instances: list[InstanceInfo]
    notes: list[str] = field(default_factory=list)  # e.g. "series 3 continues on disc 2"
    number: int = 1
    count: int = 1


def capacities(override: dict[str, int] | None) -> dict[str, int]:
    caps = dict(publish.MEDIA_CAPACITY)
    caps.update(override or {})
    return caps


def allowed(allowed_media: Sequence[str]) -> list[str]:
    media = [m for m in publish.MEDIA_ORDER if m in set(allowed_media)]
    unknown = sorted(set(allowed_media) - set(publish.MEDIA_ORDER))
    if unknown:
        raise BuildError(f"unknown media {', '.join(unknown)} (known: {', '.join(publish.MEDIA_ORDER)})")
    if not media:
        raise BuildError("no media allowed for this job (the robot has no media configured)")
    return media


class _Bins:
    """Greedy packer keeping job order: fills one disc, then starts the next."""

    def __init__(self, media: str, capacity: int) -> None:
        self.media, self.capacity = media, capacity
        self.discs: list[list[InstanceInfo]] = [[]]
        self.used = FIXED_OVERHEAD
        self.series: set[str] = set()

    def cost(self, items: Sequence[InstanceInfo]) -> int:
        new_series = {i.series_uid for i in items} - self.series
        return PER_SERIES_OVERHEAD * len(new_series) + sum(instance_bytes(i, self.media) for i in items)

    def fits(self, items: Sequence[InstanceInfo]) -> bool:
        return self.used + self.cost(items) <= self.capacity

    def fits_empty(self, items: Sequence[InstanceInfo]) -> bool:
        return disc_bytes(items, self.media) <= self.capacity

    def put(self, items: Sequence[InstanceInfo]) -> None:
        self.used += self.cost(items)
        self.series |= {i.series_uid for i in items}
        self.discs[-1].extend(items)

    def new_disc(self) -> None:
        if self.discs[-1]:
            self.discs.append([])
            self.used = FIXED_OVERHEAD
            self.series = set()


def plan_discs(infos: Sequence[InstanceInfo], allowed_media: Sequence[str],
               capacity: dict[str, int] | None = None) -> list[DiscPlan]:
    """One plan per disc: the smallest media that holds everything, else a split over the largest."""
    if not infos:
        raise BuildError("the job has no instances")
    media_list = allowed(allowed_media)
    caps = capacities(capacity)
    for media in media_list:
        if disc_bytes(infos, media) <= caps[media]:
            return [DiscPlan(media, list(infos))]
    media = media_list[-1]
    bins = _Bins(media, caps[media])
    notes: dict[int, list[str]] = {}

    def place(items: list[InstanceInfo]) -> bool:
        """Put a unit on the current disc or a fresh one; False when it fits on no disc alone."""
        if bins.fits(items):
            bins.put(items)
            return True
        if bins.fits_empty(items):
            bins.new_disc()
            bins.put(items)
            return True
        return False

    for _, study in groupby(infos, key=lambda i: i.study_uid):
        study_items = list(study)
        if place(study_items):
            continue
        for _, series in groupby(study_items, key=lambda i: i.series_uid):
            series_items = list(series)
            if place(series_items):
                continue
            # last resort: one series larger than a disc, split between instances
            used_discs = []
            for info in series_items:
                if not place([info]):
                    raise BuildError(f"instance {info.sop_uid} ({info.size} bytes) is larger than a {media} "
                                     f"({caps[media]} bytes)")
                used_discs.append(len(bins.discs))
            first_disc, last_disc = used_discs[0], used_discs[-1]
            label = f"series {series_items[0].series_number} ({series_items[0].series_description or 'no description'})"
            for disc in range(first_disc, last_disc + 1):
                notes.setdefault(disc, []).append(
                    f"{label} is larger than one disc; its images are split over discs {first_disc} to {last_disc}.")
    discs = [d for d in bins.discs if d]
    return [DiscPlan(media, items, notes.get(n, []), n, len(discs)) for n, items in enumerate(discs, 1)]
