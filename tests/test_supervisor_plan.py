"""The supervisor runs what its plan lists and nothing else: real child processes, no station."""

from __future__ import annotations

import os
import sys

import pytest
from support import wait_for

from appliance.supervisor.plan import Plan, ProcessSpec
from appliance.supervisor.supervisor import Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


class RecordingPlan(Plan):
    def __init__(self, specs: list[ProcessSpec]) -> None:
        super().__init__()
        self.specs = specs
        self.is_changed = False
        self.events: list[str] = []

    def __call__(self) -> list[ProcessSpec]:
        return list(self.specs)

    def start(self) -> None:
        self.events.append("start")

    def changed(self) -> bool:
        changed, self.is_changed = self.is_changed, False
        return changed

    def stopped(self, spec: ProcessSpec) -> None:
        self.events.append(f"stopped {spec.name} {spec.meta.get('what')}")

    def status(self) -> dict:
        return {"plan": "recording"}

    def close(self) -> None:
        self.events.append("close")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_processes_follow_the_plan_and_the_plan_hears_of_stops(tmp_path):
    plan = RecordingPlan([ProcessSpec("a", SLEEPER, {"what": "first"}, notify_ready=False),
                          ProcessSpec("b", SLEEPER, {"what": "second"}, notify_ready=False)])
    sup = Supervisor(tmp_path, plan, tick=0.05)
    try:
        sup.reconcile()
        pids = {name: proc.pid for name, proc in sup.procs.items()}
        assert set(pids) == {"a", "b"} and all(alive(p) for p in pids.values())
        snapshot = sup.snapshot()
        assert snapshot["plan"] == "recording"
        assert {p["name"]: p["what"] for p in snapshot["processes"]} == {"a": "first", "b": "second"}
        # the plan drops "a": it is stopped, forgotten, and the plan is told
        plan.specs = plan.specs[1:]
        plan.is_changed = True

        def a_gone() -> bool:
            sup.step()
            return "a" not in sup.procs

        wait_for(a_gone, 15, "process a stopped", every=0.05)
        assert not alive(pids["a"]) and alive(pids["b"])
        assert plan.events == ["stopped a first"]
    finally:
        sup.shutdown()
    assert not alive(pids["b"])
    assert plan.events[-1] == "close"


def test_a_plain_function_is_a_plan(tmp_path):
    sup = Supervisor(tmp_path, lambda: [ProcessSpec("x", SLEEPER, notify_ready=False)])
    assert list(sup.desired()) == ["x"]


def test_two_processes_of_one_name_are_refused(tmp_path):
    sup = Supervisor(tmp_path, lambda: [ProcessSpec("x", SLEEPER), ProcessSpec("x", SLEEPER)])
    with pytest.raises(ValueError, match="two processes named 'x'"):
        sup.desired()
