"""Process states and the transitions allowed between them (after supervisord's states.py).

STOPPED --spawn--> STARTING --alive startsecs--> RUNNING --exit--> EXITED --restart--> STARTING
STARTING --exit before startsecs--> BACKOFF --delay--> STARTING ... --too many--> FATAL ("failed")
any live state --stop--> STOPPING --gone--> STOPPED (or straight to STOPPED when a child the
supervisor no longer wants exits by itself, e.g. all got SIGTERM from the terminal at once)
Depends on nothing, so tests and the status command can use it freely.
"""

from __future__ import annotations

import enum


class ProcessState(enum.Enum):
    STOPPED = "stopped"    # not running and not meant to (yet)
    STARTING = "starting"  # spawned, not yet alive for `startsecs`
    RUNNING = "running"    # alive past `startsecs`
    BACKOFF = "backoff"    # exited (too early or crashed); waiting for the next try
    STOPPING = "stopping"  # SIGTERM sent, waiting for it to go
    EXITED = "exited"      # a running process ended; restart pending
    FATAL = "failed"       # kept failing right after start; not restarted until asked

    def __str__(self) -> str:
        return self.value


S = ProcessState

# from-state -> states it may move to
TRANSITIONS: dict[ProcessState, frozenset[ProcessState]] = {
    S.STOPPED: frozenset({S.STARTING, S.BACKOFF, S.FATAL}),
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.STOPPING, S.FATAL, S.STOPPED}),
    S.RUNNING: frozenset({S.EXITED, S.BACKOFF, S.STOPPING, S.STOPPED}),
    S.BACKOFF: frozenset({S.STARTING, S.FATAL, S.STOPPED}),
    S.EXITED: frozenset({S.STARTING, S.BACKOFF, S.STOPPED}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.FATAL: frozenset({S.STARTING, S.STOPPED}),
}

# states in which a child process exists
RUNNING_STATES = frozenset({S.STARTING, S.RUNNING, S.STOPPING})
# states from which the supervisor will start the process again by itself
RESTARTABLE_STATES = frozenset({S.BACKOFF, S.EXITED})


class StateError(RuntimeError):
    """An illegal transition: a bug in the supervisor, never a child's fault."""


def check_transition(old: ProcessState, new: ProcessState) -> None:
    if new is not old and new not in TRANSITIONS[old]:
        raise StateError(f"illegal process state change {old} -> {new}")
