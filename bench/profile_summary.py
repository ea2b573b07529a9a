"""Summarise a py-spy raw profile (`--threads --subprocesses --idle`) of the station's dicom process.

Why: the store benchmark can record the station with py-spy (BENCH_PROFILE_DIR=dir); this prints
samples per thread and the heaviest functions (inclusive / self) so a change can be judged by
where the time goes, not only by the wall clock.

    .venv/bin/python bench/profile_summary.py PROFILE.txt [--process dicom] [--top 40] [--match TEXT]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile")
    parser.add_argument("--process", default="service dicom", help="substring of the process command line")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--match", default="", help="only stacks containing this text")
    args = parser.parse_args(argv)
    per_thread: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    total = 0
    for line in open(args.profile):
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not count_text.isdigit() or args.process not in stack or args.match not in stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        proc_idx = max(i for i, f in enumerate(frames) if f.startswith("process "))
        frames = frames[proc_idx + 1:]
        if not frames:
            continue
        thread = re.sub(r"\(\d+\)", "", frames[0])
        calls = frames[1:]
        per_thread[thread + " / " + (calls[-1] if calls else "-")[:60]] += 0
        per_thread[thread] += count
        total += count
        seen = set()
        for frame in calls:
            name = re.sub(r":\d+\)", ")", frame)
            if name not in seen:
                inclusive[name] += count
                seen.add(name)
        if calls:
            self_time[calls[-1]] += count
    print(f"{total} samples")
    print("per thread:")
    for name, count in per_thread.most_common():
        if count:
            print(f"  {count:7d} {100 * count / total:5.1f}%  {name}")
    print("inclusive:")
    for name, count in inclusive.most_common(args.top):
        print(f"  {count:7d} {100 * count / total:5.1f}%  {name}")
    print("self:")
    for name, count in self_time.most_common(args.top):
        print(f"  {count:7d} {100 * count / total:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
