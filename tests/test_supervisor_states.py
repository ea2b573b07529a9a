"""The supervisor's process rules, driven by a fake clock and fake children (no real processes)."""

from __future__ import annotations

import pytest

from appliance.supervisor.process import Process, ProcessConfig, describe_exit
from appliance.supervisor.states import ProcessState as S
from appliance.supervisor.states import StateError, check_transition


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeChild:
    pids = iter(range(100, 10_000))

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.code: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)

    def kill(self) -> None:
        self.signals.append(9)


class Spawner:
    def __init__(self) -> None:
        self.children: list[FakeChild] = []

    def __call__(self, argv, **kw) -> FakeChild:
        child = FakeChild()
        self.children.append(child)
        return child


def make(**kw) -> tuple[Process, FakeClock, Spawner]:
    clock, spawner = FakeClock(), Spawner()
    config = ProcessConfig(name="svc", argv=["true"], startsecs=3, startretries=2, **kw)
    return Process(config, clock=clock, spawner=spawner), clock, spawner


def test_running_after_startsecs():
    proc, clock, _ = make()
    proc.spawn()
    assert proc.state is S.STARTING
    clock.now += 2.9
    proc.poll()
    proc.tick()
    assert proc.state is S.STARTING
    clock.now += 0.2
    proc.tick()
    assert proc.state is S.RUNNING and proc.starts == 1


def test_crash_after_running_restarts_with_growing_delay():
    proc, clock, spawner = make(backoff_base=0.5)
    proc.spawn()
    clock.now += 5
    proc.tick()
    delays = []
    for _ in range(4):
        spawner.children[-1].code = -9
        assert proc.poll()
        assert proc.state is S.BACKOFF and proc.last_exit == "killed by SIGKILL"
        delays.append(proc.delay_until - clock.now)
        clock.now = proc.delay_until - 0.01
        proc.tick()
        assert proc.state is S.BACKOFF  # not yet
        clock.now += 0.02
        proc.tick()
        assert proc.state is S.STARTING
        clock.now += 5  # runs fine for a while, then crashes again
        proc.tick()
        assert proc.state is S.RUNNING
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert proc.starts == 5


def test_crash_streak_resets_after_a_stable_run():
    proc, clock, spawner = make(backoff_base=0.5, stable_secs=60)
    proc.spawn()
    clock.now += 5
    proc.tick()
    spawner.children[-1].code = 1
    proc.poll()
    clock.now = proc.delay_until
    proc.tick()
    clock.now += 120
    proc.tick()
    spawner.children[-1].code = 1
    proc.poll()
    assert proc.delay_until - clock.now == 0.5


def test_fails_fast_then_fatal_and_not_restarted():
    proc, clock, spawner = make()
    proc.spawn()
    for attempt in range(3):
        clock.now += 0.5
        spawner.children[-1].code = 3
        proc.poll()
        if attempt < 2:
            assert proc.state is S.BACKOFF
            assert proc.delay_until - clock.now == attempt + 1  # 1 s, then 2 s
            clock.now = proc.delay_until
            proc.tick()
            assert proc.state is S.STARTING
    assert proc.state is S.FATAL
    assert str(proc.state) == "failed"
    assert "exit status 3" in proc.message
    clock.now += 3600
    assert not proc.tick()
    assert proc.state is S.FATAL and len(spawner.children) == 3


def test_stop_sends_sigterm_then_sigkill():
    proc, clock, spawner = make(stopwaitsecs=5)
    proc.spawn()
    proc.stop()
    child = spawner.children[-1]
    assert proc.state is S.STOPPING and child.signals == [15]
    clock.now += 4.9
    proc.tick()
    assert child.signals == [15]
    clock.now += 0.2
    proc.tick()
    assert child.signals == [15, 9]
    child.code = -9
    proc.poll()
    assert proc.state is S.STOPPED and not proc.alive()
    clock.now += 100
    proc.tick()
    assert len(spawner.children) == 1  # a stopped process stays stopped


def test_stop_from_backoff_and_illegal_moves():
    proc, clock, spawner = make()
    proc.spawn()
    spawner.children[-1].code = 1
    proc.poll()
    assert proc.state is S.BACKOFF
    proc.stop()
    assert proc.state is S.STOPPED
    with pytest.raises(StateError):
        check_transition(S.STOPPED, S.RUNNING)
    with pytest.raises(StateError):
        check_transition(S.FATAL, S.RUNNING)


def test_describe_exit():
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(-15) == "killed by SIGTERM"
