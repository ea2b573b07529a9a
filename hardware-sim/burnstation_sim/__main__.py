"""`burnstation-sim`: the robot simulator program (see hardware-sim/README.md).

    burnstation-sim --spool SPOOL --root ROOT [--robots epson,primera] [--speed N] [--faults ...]
    burnstation-sim ctl --root ROOT <robot> <command> [args]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from .control import CommandError, ctl_main, parse_fault_spec
from .simulator import Simulator, parse_encodings, parse_path_maps, parse_robots


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="burnstation-sim",
        description="Plays Epson TD Bridge / Primera PTBurn engines and their robots on spool folders. "
        "Operator commands: burnstation-sim ctl --help.")
    parser.add_argument("--spool", required=True, type=Path, help="robot <name> watches SPOOL/<name>/")
    parser.add_argument("--root", required=True, type=Path,
                        help="simulator state: ROOT/bin/<robot>/<job>/, ROOT/devices/, ROOT/control/")
    parser.add_argument("--robots", default="epson,primera",
                        help="comma list of kind[:name], kind epson|primera (default: epson,primera)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="time multiplier: 1 realistic (minutes per disc), 0.1 ten times faster, 0 instant")
    parser.add_argument("--faults", default="",
                        help="faults set at start: robot:fault[,robot:write_error=N,...]")
    parser.add_argument("--path-map", action="append", default=[], metavar="PREFIX=LOCAL_DIR",
                        help="paths in job files starting with PREFIX (as the engine's host sees the share) "
                        "are read from LOCAL_DIR; repeatable")
    parser.add_argument("--encoding", action="append", default=[], metavar="ROBOT=CODEPAGE",
                        help="the code page ROBOT's engine reads job files in (default: cp1252 for Epson, "
                        "ascii for Primera); decoded strictly; repeatable")
    parser.add_argument("--lcd", action="store_true",
                        help="also offer a virtual front-panel LCD on a pty (ROOT/devices/lcd.json, ROOT/lcd-screen.txt)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def describe(sim: Simulator) -> str:
    lines = ["burnstation-sim running:"]
    for name, engine in sim.engines.items():
        lines.append(f"  {name} ({engine.kind}, {engine.model}): spool {engine.folder}  output bin {engine.bin_root}/")
    lines.append(f"  devices: {sim.root / 'devices'}/   faults: burnstation-sim ctl --root {sim.root} <robot> fault cover_open on")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        robots = parse_robots(args.robots)
        path_maps = parse_path_maps(args.path_map)
        encodings = parse_encodings(args.encoding, robots)
        faults = parse_fault_spec(args.faults)
        if args.speed < 0:
            raise ValueError("--speed must be 0 or more")
    except (ValueError, CommandError) as exc:
        print(f"burnstation-sim: {exc}", file=sys.stderr)
        return 2
    sim = Simulator(args.spool, args.root, robots, args.speed, path_maps, encodings)
    try:
        for robot_name, words in faults:
            sim.apply(robot_name, words)
    except CommandError as exc:
        print(f"burnstation-sim: --faults: {exc}", file=sys.stderr)
        return 2
    # optional components (objects with tick() and close()) are appended to sim.components here
    if args.lcd:
        from .lcd import VirtualLCD

        sim.components.append(VirtualLCD(sim.root))

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(describe(sim), file=sys.stderr, flush=True)
    sim.run(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:
        return ctl_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s burnstation-sim %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
