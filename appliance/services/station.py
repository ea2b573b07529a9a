"""`burnstation run`: the station in the foreground until SIGTERM or Ctrl-C.

Every service is a module `appliance.services.<name>` with
`serve(data_dir: Path, stop: threading.Event, ready: threading.Event | None) -> None`
that runs until `stop` is set. The supervisor (`appliance.supervisor`) runs each service listed in
`SERVICES` (those whose module exists) as its own process `burnstation service NAME`, plus one
driver process per robot, the front panel and, with --simulate, the hardware simulator.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

LOG = logging.getLogger("burnstation")

# the services `run` starts, in start order (stopped in reverse)
SERVICES = ["dicom", "hl7", "web", "burner", "transfer"]


def available_services() -> list[str]:
    """SERVICES whose module exists, in order, without duplicates."""
    out: list[str] = []
    for name in SERVICES:
        if name in out:
            continue
        try:
            found = importlib.util.find_spec(f"appliance.services.{name}") is not None
        except ImportError:
            found = False
        if found:
            out.append(name)
    return out


def run(data_dir: str | os.PathLike[str], simulate: bool = False, robots: str = "epson,primera",
        sim_speed: float = 1.0) -> int:
    from appliance.supervisor.supervisor import Supervisor

    supervisor = Supervisor(Path(data_dir), simulate=simulate, sim_robots=robots, sim_speed=sim_speed)
    supervisor.install_signals()
    if simulate:
        sim = supervisor.sim_root
        first = supervisor.sim_robots[0][1] if supervisor.sim_robots else "epson"
        print(f"Simulator: robots {', '.join(n for _, n in supervisor.sim_robots)}; "
              f"output bin {sim}/bin/<robot>/<job id>/", flush=True)
        print(f"Inject a fault: burnstation-sim ctl --root {sim} {first} fault input_empty on "
              f"(and ... off); unplug: burnstation-sim ctl --root {sim} {first} unplug", flush=True)
    LOG.info("BurnStation running (data: %s); Ctrl-C stops it", data_dir)
    code = supervisor.run()
    LOG.info("BurnStation stopped")
    return code
