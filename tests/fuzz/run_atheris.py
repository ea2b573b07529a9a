"""Run one in-process target (tests/fuzz/targets.py) under atheris, coverage-guided, for N seconds.

    python tests/fuzz/run_atheris.py TARGET --seconds 300      # fuzz; corpus in tests/fuzz/corpus/TARGET
    python tests/fuzz/run_atheris.py TARGET --replay FILE...   # run inputs once (a crash reproducer)

The corpus folder keeps what the fuzzer found interesting (started from the target's seeds); a
failing input is written to tests/fuzz/crashes/TARGET/ by libFuzzer (crash-<sha1>) and the
process exits non-zero. tests/fuzz/run.py (`make fuzz`) runs this per target and reads the
libFuzzer statistics from its output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # tests/: support, worklist_support (seeds)

# the modules whose code the fuzzer measures coverage of (instrumented when imported below)
INSTRUMENTED = ["appliance", "webui", "pynetdicom", "pydicom", "hl7", "bottle"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target")
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--replay", nargs="*", type=Path)
    parser.add_argument("--max-len", type=int, default=8192)
    args = parser.parse_args()

    if args.replay is not None:
        import targets

        fn = targets.TARGETS[args.target]
        for path in args.replay:
            fn(path.read_bytes())
            print(f"{path}: held")
        return 0

    import atheris

    with atheris.instrument_imports(include=INSTRUMENTED):
        import targets

        targets.seeds(args.target)  # imports what the target uses, inside the instrumented block
        targets.TARGETS[args.target](b"")
    fn = targets.TARGETS[args.target]
    corpus = HERE / "corpus" / args.target
    crashes = HERE / "crashes" / args.target
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(targets.seeds(args.target)):
        path = corpus / f"seed-{i:03d}"
        if not path.exists():
            path.write_bytes(seed)

    def one_input(data: bytes) -> None:
        fn(data)

    atheris.Setup([sys.argv[0], str(corpus), f"-max_total_time={args.seconds}", f"-artifact_prefix={crashes}/",
                   "-timeout=20", "-rss_limit_mb=3072", "-print_final_stats=1", f"-max_len={args.max_len}",
                   "-reduce_inputs=1"], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
