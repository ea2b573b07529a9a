"""Disc builder speed and memory: a whole build of a 1 GB study next to `xorriso -as mkisofs`.

Usage: .venv/bin/python bench/disc_bench.py [--instances 2000] [--media DVD] [--rounds 3] [--input-root DIR] [--keep]

Generates N instances of 512 KB (512 × 512 × 16 bit CT, one study, 4 series) in a temporary
folder under /tmp, builds the disc in a child process (wall time and that child's peak RSS from
resource.getrusage), then packs the very same staged tree with `xorriso -as mkisofs -J` (ISO 9660 + Joliet;
xorriso cannot write UDF), and deletes everything unless --keep. Targets (issue 3): build ≤ 2 × the xorriso
packing time, peak memory < 300 MB.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def generate(folder: Path, count: int, side: int = 512) -> list[dict]:
    from pydicom.uid import generate_uid
    from support import make_dataset

    folder.mkdir(parents=True)
    study = generate_uid()
    series = [generate_uid() for _ in range(4)]
    paths = []
    for i in range(count):
        s = i % 4
        ds = make_dataset(study_uid=study, series_uid=series[s], series_number=s + 1, instance_number=i // 4 + 1,
                          rows=side, cols=side, seed=i)
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        # what index.instances holds for a received file
        paths.append({"path": str(path), "sop_uid": ds.SOPInstanceUID, "series_uid": ds.SeriesInstanceUID,
                      "study_uid": ds.StudyInstanceUID, "sop_class": ds.SOPClassUID,
                      "transfer_syntax": ds.file_meta.TransferSyntaxUID, "size": path.stat().st_size,
                      "instance_number": str(ds.InstanceNumber)})
    return paths


def child(args: argparse.Namespace) -> None:
    """Runs in its own process so that ru_maxrss is the build's alone."""
    from appliance.burn.builder import BuildOptions, build_discs

    rows = json.loads(Path(args.child).read_text())
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    start = time.perf_counter()
    discs = build_discs(rows, Path(args.work), BuildOptions("bench", [args.media], institution="Bench"))
    elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "tree": str(discs[0].tree), "image": str(discs[0].image),
                      "size": discs[0].size, "discs": len(discs)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--side", type=int, default=512, help="rows = columns of the 16-bit images (512: 512 KB each)")
    parser.add_argument("--media", default="DVD", choices=["CD", "DVD", "DVD-DL", "BD"])
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--input-root", help="put the study on another file system (e.g. /dev/shm): the builder "
                        "then copies files instead of hard-linking them")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(subprocess.run(["df", "-h", "/tmp"], capture_output=True, text=True).stdout.strip())
    need = args.instances * 530_000 * 3
    if shutil.disk_usage("/tmp").free < need * 1.2:
        sys.exit(f"not enough space in /tmp: need about {need / 1e9:.1f} GB")
    root = Path(tempfile.mkdtemp(prefix="disc_bench_", dir="/tmp"))
    in_root = root
    try:
        start = time.perf_counter()
        in_root = Path(tempfile.mkdtemp(prefix="disc_bench_in_", dir=args.input_root)) if args.input_root else root
        paths = generate(in_root / "in", args.instances, args.side)
        total = sum(p["size"] for p in paths)
        print(f"generated {len(paths)} instances, {total / 1e6:.0f} MB in {time.perf_counter() - start:.1f} s")
        (root / "paths.json").write_text(json.dumps(paths))
        xorriso_args = ["-J"]  # xorriso writes no UDF: it packs ISO 9660 + Joliet for every media
        builds, packs, peaks = [], [], []
        for run in range(args.rounds):  # alternate, each after `sync`, so both meet the same disk state
            work = root / f"work{run}"
            subprocess.run(["sync"], check=False)
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            proc = subprocess.run([sys.executable, __file__, "--child", str(root / "paths.json"), "--work",
                                   str(work), "--media", args.media], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"build failed:\n{proc.stdout}\n{proc.stderr}")
            # RUSAGE_CHILDREN's ru_maxrss is the largest child so far: the builds are the only big children
            peaks.append(max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            builds.append(result["seconds"])
            subprocess.run(["sync"], check=False)
            out = root / "xorriso.iso"
            start = time.perf_counter()
            subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", *xorriso_args, "-V", "BENCH", "-o", str(out),
                            result["tree"]], check=True, capture_output=True)
            packs.append(time.perf_counter() - start)
            xsize = out.stat().st_size
            out.unlink()
            Path(result["image"]).unlink(missing_ok=True)
            print(f"round {run + 1}: build {builds[-1]:.1f} s, xorriso {packs[-1]:.1f} s")
            print("   " + "".join(line for line in proc.stderr.splitlines() if "instances" in line))
        print(f"media {args.media}: disc image {result['size'] / 1e6:.0f} MB ({result['discs']} disc), "
              f"xorriso image {xsize / 1e6:.0f} MB")
        print(f"whole build (catalogue, DICOMDIR, previews, pages, label, manifest, image): "
              f"median {statistics.median(builds):.1f} s over {len(builds)} rounds")
        print(f"xorriso -as mkisofs {' '.join(xorriso_args)} of the same staged tree: "
              f"median {statistics.median(packs):.1f} s")
        print(f"ratio build / xorriso: {statistics.median(builds) / statistics.median(packs):.2f} (target ≤ 2)")
        print(f"peak RSS of a build process: {max(peaks):.0f} MB (target < 300 MB)")
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (shared machine)")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            if args.input_root:
                shutil.rmtree(in_root, ignore_errors=True)


if __name__ == "__main__":
    main()
