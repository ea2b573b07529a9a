"""`burnstation run`: the station in the foreground until SIGTERM or Ctrl-C.

Every service is a module `appliance.services.<name>` with
`serve(data_dir: Path, stop: threading.Event, ready: threading.Event | None) -> None`
that runs until `stop` is set. The supervisor (`appliance.supervisor`) runs what the station's plan
(`appliance.services.plan`) lists: each service of `SERVICES` as its own process
`burnstation service NAME`, one driver process per robot, the front panel and, with --simulate,
the hardware simulator.

Before the supervisor starts anything, `appliance.dbguard` checks state.db and restores it from
its newest backup when it is damaged; while the station runs, its `Keeper` takes the scheduled
backups and, when a process finds state.db damaged, stops every process so that the restore
runs before they start again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from appliance import dbguard
from appliance.services.plan import StationPlan
from appliance.supervisor.supervisor import Supervisor

LOG = logging.getLogger("burnstation")


def run(data_dir: str | os.PathLike[str], simulate: bool = False, robots: str = "epson,primera",
        sim_speed: float = 1.0) -> int:
    data = Path(data_dir)
    terminated = threading.Event()
    first = True
    while True:
        try:
            dbguard.recover_if_damaged(data)
        except Exception:  # the processes then report what they find; the log says why
            LOG.exception("state.db check or restore failed")
        plan = StationPlan(data, simulate=simulate, sim_robots=robots, sim_speed=sim_speed)
        supervisor = Supervisor(data, plan)
        restore = threading.Event()

        def stop(*_: object, supervisor: Supervisor = supervisor) -> None:
            terminated.set()
            supervisor.stop_event.set()

        def damaged(supervisor: Supervisor = supervisor, restore: threading.Event = restore) -> None:
            restore.set()
            supervisor.stop_event.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        if terminated.is_set():
            return 0
        if simulate and first:
            sim = plan.sim_root
            name = plan.sim_robots[0][1] if plan.sim_robots else "epson"
            print(f"Simulator: robots {', '.join(n for _, n in plan.sim_robots)}; "
                  f"output bin {sim}/bin/<robot>/<job id>/", flush=True)
            print(f"Inject a fault: burnstation-sim ctl --root {sim} {name} fault input_empty on "
                  f"(and ... off); unplug: burnstation-sim ctl --root {sim} {name} unplug", flush=True)
        first = False
        keeper = dbguard.Keeper(data, damaged)
        keeper.start()
        LOG.info("BurnStation running (data: %s); Ctrl-C stops it", data_dir)
        code = supervisor.run()
        keeper.stop.set()
        keeper.join(30)
        if code != 0 or terminated.is_set() or not restore.is_set():
            break
        LOG.warning("every process stopped for the state.db restore; starting them again")
    LOG.info("BurnStation stopped")
    return code
