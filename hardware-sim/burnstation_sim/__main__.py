"""`burnstation-sim`: the robot simulator program."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("burnstation-sim: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
