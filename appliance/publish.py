"""The interface between the burn pipeline and whatever makes a disc (robot drivers, folder export).

The pipeline builds `DiscImage`s, hands a `PublishRequest` to a `Publisher`, and polls it. Drivers
live in `drivers/` and implement this interface; `appliance` never imports a driver by name (they
are found through `PUBLISHER_FACTORIES`, filled by `drivers.register_all()`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MEDIA_CAPACITY = {  # bytes of user data
    "CD": 700 * 1000 * 1000,
    "DVD": 4_700 * 1000 * 1000,
    "DVD-DL": 8_500 * 1000 * 1000,
    "BD": 25_000 * 1000 * 1000,
}
MEDIA_ORDER = ("CD", "DVD", "DVD-DL", "BD")


@dataclass
class DiscImage:
    """One finished disc: its image file and the staged tree it was made from."""

    image: Path  # ISO 9660+Joliet (CD) or UDF (DVD/BD) image
    tree: Path  # the staged folder (for data mode and folder export)
    media: str  # one of MEDIA_ORDER
    filesystem: str  # "ISO9660+JOLIET" or "UDF"
    volume_label: str
    size: int
    label_image: Path | None = None  # rendered label (PNG/JPEG) for robots that print images
    label_fields: dict[str, str] = field(default_factory=dict)  # merge fields, values untrusted
    disc_number: int = 1
    disc_count: int = 1
    # objects on this disc not in the syntax its media profile asks for, each with the reason
    off_profile: list[str] = field(default_factory=list)


@dataclass
class PublishRequest:
    """What a publisher is asked to make: one job of one or more discs, `copies` of each."""

    job_id: str  # [A-Za-z0-9_-], unique; the robot's job id derives from it (re-attach after restart)
    discs: list[DiscImage]
    copies: int = 1
    verify: bool = True
    priority: int = 0


# states a publisher reports for a job
WAITING = "waiting"  # accepted, held (e.g. input stacker empty, cover open); message says why
BURNING = "burning"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
UNKNOWN = "unknown"  # the publisher does not know this job


@dataclass
class JobProgress:
    state: str
    progress: float = 0.0  # 0..1
    message: str = ""  # the robot's own words, for the UI
    error_code: str = ""  # vendor error code (e.g. JDF0903, 18)
    discs_done: int = 0
    discs_failed: int = 0


@dataclass
class RobotStatus:
    """A robot as the UI and the dispatcher see it."""

    name: str
    kind: str  # "epson", "primera", "folder"
    online: bool
    message: str = ""
    media: list[str] = field(default_factory=list)  # media loaded, from MEDIA_ORDER
    stackers: dict[str, Any] = field(default_factory=dict)
    ink: dict[str, int] = field(default_factory=dict)  # colour → percent
    drives: list[dict[str, Any]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)


class Publisher(abc.ABC):
    """Something that turns a PublishRequest into discs (or files)."""

    name: str
    kind: str

    @abc.abstractmethod
    def status(self) -> RobotStatus:
        """Current state; never raises for a robot that is merely offline."""

    @abc.abstractmethod
    def submit(self, request: PublishRequest) -> None:
        """Hand the job over; returns once the robot (or engine) has the job request."""

    @abc.abstractmethod
    def poll(self, job_id: str) -> JobProgress:
        """Where the job is; UNKNOWN when the publisher never saw it (re-attach looks here)."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> bool:
        """Ask to cancel; True when the request was delivered."""


# The one factory signature: `factory(robot, data_dir) -> Publisher`. `robot` is the robot's
# document from the settings' `robots` table (name, driver, spool, media, and the driver's own keys);
# `data_dir` is the station's data folder (where a driver keeps its own files; None when it needs
# none). A Publisher class whose __init__ takes these two is its own factory.
PublisherFactory = Callable[[Mapping[str, Any], "Path | None"], Publisher]

# kind → factory; the folder export and the drivers register themselves here
PUBLISHER_FACTORIES: dict[str, PublisherFactory] = {}


def register(kind: str, factory: PublisherFactory) -> None:
    PUBLISHER_FACTORIES[kind] = factory
