"""`burnstation run`: the station in the foreground until SIGTERM or Ctrl-C.

Every service is a module `appliance.services.<name>` with
`serve(data_dir: Path, stop: threading.Event, ready: threading.Event | None) -> None`
that runs until `stop` is set. The supervisor (`appliance.supervisor`) runs what the station's plan
(`appliance.services.plan`) lists: each service of `SERVICES` as its own process
`burnstation service NAME`, one driver process per robot, the front panel and, with --simulate,
the hardware simulator.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from appliance.services.plan import StationPlan
from appliance.supervisor.supervisor import Supervisor

LOG = logging.getLogger("burnstation")


def run(data_dir: str | os.PathLike[str], simulate: bool = False, robots: str = "epson,primera",
        sim_speed: float = 1.0) -> int:
    plan = StationPlan(Path(data_dir), simulate=simulate, sim_robots=robots, sim_speed=sim_speed)
    supervisor = Supervisor(Path(data_dir), plan)
    supervisor.install_signals()
    if simulate:
        sim = plan.sim_root
        first = plan.sim_robots[0][1] if plan.sim_robots else "epson"
        print(f"Simulator: robots {', '.join(n for _, n in plan.sim_robots)}; "
              f"output bin {sim}/bin/<robot>/<job id>/", flush=True)
        print(f"Inject a fault: burnstation-sim ctl --root {sim} {first} fault input_empty on "
              f"(and ... off); unplug: burnstation-sim ctl --root {sim} {first} unplug", flush=True)
    LOG.info("BurnStation running (data: %s); Ctrl-C stops it", data_dir)
    code = supervisor.run()
    LOG.info("BurnStation stopped")
    return code
