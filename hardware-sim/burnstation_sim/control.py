"""The operator's side: commands that set faults, refill stackers, plug and unplug robots.

A command is a file dropped into `ROOT/control/` (written aside as `.<id>.tmp`, renamed to
`<id>.cmd`); the running simulator consumes it, applies it and answers with `<id>.reply` (JSON,
written atomically). `burnstation-sim ctl` does exactly that and prints the reply."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

from . import files
from .robot import FAULTS

USAGE = """commands:
  fault input_empty|output_full|cover_open|ink_low|offline on|off
  fault write_error N on|off     the Nth disc of the next job that reaches N discs fails (once)
  refill [N]                     fill the input stackers (to N discs each), empty the outputs
  plug | unplug                  announce / withdraw the robot (unplugged: it stops working)
  cancel [JOB]                   the operator cancels a job at the robot (default: the running one)
  status                         print the robot's state as JSON"""


class CommandError(Exception):
    """A command the simulator refuses (the reply says why)."""


def parse_command(words: list[str]) -> tuple[str, list[str]]:
    """Check a command's shape: returns (command, args) or raises CommandError."""
    if not words:
        raise CommandError("no command")
    command, args = words[0], words[1:]
    if command == "fault":
        if len(args) < 2 or args[0] not in FAULTS or args[-1] not in ("on", "off"):
            raise CommandError(f"usage: fault <{'|'.join(FAULTS)}> [N] on|off")
        if args[0] == "write_error":
            if args[-1] == "on" and (len(args) != 3 or not args[1].isdigit() or int(args[1]) < 1):
                raise CommandError("usage: fault write_error N on  (N = disc number, 1 or more)")
        elif len(args) != 2:
            raise CommandError(f"usage: fault {args[0]} on|off")
    elif command == "refill":
        if len(args) > 1 or (args and not args[0].isdigit()):
            raise CommandError("usage: refill [N]")
    elif command == "cancel":
        if len(args) > 1:
            raise CommandError("usage: cancel [JOB]")
    elif command in ("plug", "unplug", "status"):
        if args:
            raise CommandError(f"usage: {command}")
    else:
        raise CommandError(f"unknown command {command!r}")
    return command, args


def parse_fault_spec(spec: str) -> list[tuple[str, list[str]]]:
    """`--faults robot:fault[=N],...` → [(robot, ["fault", name, (N,) "on"]), ...]."""
    out = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        robot, sep, fault = item.partition(":")
        if not sep or not robot or not fault:
            raise CommandError(f"--faults item {item!r}: expected robot:fault or robot:write_error=N")
        name, _, number = fault.partition("=")
        words = ["fault", name] + ([number] if number else []) + ["on"]
        parse_command(words)
        out.append((robot, words))
    return out


def read_request(path: Path) -> tuple[str, list[str]]:
    """A `.cmd` file: JSON {"robot": ..., "command": ..., "args": [...]}, or one plain text line
    `<robot> <command> [args]`."""
    text = path.read_text("utf-8", "replace").strip()
    if text.startswith("{"):
        doc = json.loads(text)
        return str(doc.get("robot", "")), [str(doc.get("command", ""))] + [str(a) for a in doc.get("args", [])]
    words = text.split()
    if not words:
        raise CommandError("empty command file")
    return words[0], words[1:]


def write_reply(path: Path, reply: dict) -> None:
    files.write_atomic(path.with_suffix(".reply"), (json.dumps(reply, indent=1) + "\n").encode())


# -- the ctl client -------------------------------------------------------------------------------
def send(root: Path, robot: str, words: list[str], timeout: float = 10.0) -> dict:
    """Drop a command file and wait for the simulator's reply."""
    control = root / "control"
    if not control.is_dir():
        raise CommandError(f"{control} does not exist: is burnstation-sim running with --root {root}?")
    ident = f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = control / f".{ident}.tmp"
    tmp.write_text(json.dumps({"robot": robot, "command": words[0], "args": words[1:]}))
    os.replace(tmp, control / f"{ident}.cmd")
    reply_path = control / f"{ident}.reply"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reply_path.exists():
            reply = json.loads(reply_path.read_text())
            reply_path.unlink(missing_ok=True)
            return reply
        time.sleep(0.05)
    (control / f"{ident}.cmd").unlink(missing_ok=True)
    raise TimeoutError(f"no simulator answered within {timeout:g} s (is it running with --root {root}?)")


def ctl_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="burnstation-sim ctl", description="Talk to a running simulator.",
                                     epilog=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="the simulator's --root")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the answer")
    parser.add_argument("robot", help="robot name (as in --robots)")
    parser.add_argument("words", nargs="+", metavar="command", help="command and arguments")
    args = parser.parse_args(argv)
    try:
        parse_command(args.words)
        reply = send(args.root, args.robot, args.words, args.timeout)
    except CommandError as exc:
        print(f"burnstation-sim ctl: {exc}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(f"burnstation-sim ctl: {exc}", file=sys.stderr)
        return 2
    if not reply.get("ok"):
        print(f"burnstation-sim ctl: {reply.get('error', 'refused')}", file=sys.stderr)
        return 1
    if args.words[0] == "status":
        print(json.dumps(reply.get("status", {}), indent=1))
    else:
        print(reply.get("message", "ok"))
    return 0
