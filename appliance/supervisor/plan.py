"""What the supervisor runs: a plan, asked again whenever something may have changed.

The supervisor knows processes, not the station: it starts what the plan lists, stops what the plan
no longer lists, and tells the plan when such a process is gone. The station's plan (services,
robots' drivers, the front panel, the simulator) is `appliance.services.plan.StationPlan`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProcessSpec:
    """One process that should run: its name (unique), command line, and what it is (`meta` ends up
    in the supervisor's state file, e.g. {"kind": "driver", "robot": "epson"})."""

    name: str
    argv: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    notify_ready: bool = True  # reports readiness on the pipe (a `burnstation service`); else running = ready


class Plan:
    """The processes that should run now. Either wrap a function (`Plan(lambda: [...])`) or subclass
    and override `__call__` and the hooks the supervisor calls from its loop."""

    def __init__(self, specs: Callable[[], list[ProcessSpec]] | None = None) -> None:
        self._specs = specs

    def __call__(self) -> list[ProcessSpec]:
        if self._specs is None:
            raise TypeError(f"{type(self).__name__}: give a function to Plan() or override __call__")
        return self._specs()

    def start(self) -> None:
        """Called once before the first `__call__`."""

    def changed(self) -> bool:
        """Called every tick: True when the plan may list other processes than last time."""
        return False

    def stopped(self, spec: ProcessSpec) -> None:
        """A process the plan no longer listed has stopped."""

    def status(self) -> dict[str, Any]:
        """Extra fields for the supervisor's state file."""
        return {}

    def close(self) -> None:
        """Called once after every process stopped."""
