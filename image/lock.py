#!/usr/bin/env python3
"""Writes image/requirements.lock: the image's Python packages, pinned with their PyPI hashes.

The versions are those of the dev venv (what the tests ran against); pip resolves the root project's
runtime dependencies (plus setuptools and wheel to build it) against PyPI alone, ignoring the host's
pip configuration, so every file in the lock is one the image's pip can fetch and verify.
Usage: python3 image/lock.py [--venv .venv]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "image" / "requirements.lock"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=str(ROOT / ".venv"), help="the dev venv whose versions are pinned")
    args = ap.parse_args()
    py = Path(args.venv) / "bin" / "python"
    if not py.exists():
        sys.exit(f"lock: no venv at {args.venv} (run `make venv` first)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # PyPI only: no local indexes, find-links or constraints
    cert = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    freeze = subprocess.run([str(py), "-m", "pip", "freeze", "--exclude-editable"], env=env,
                            check=True, capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(line + "\n" for line in freeze.splitlines()
                                       if "==" in line and not line.startswith("burnstation")))
        report = Path(tmp) / "report.json"
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                        "--only-binary=:all:", "--no-binary=burnstation", "--cert", cert,
                        "-c", str(constraints), "--report", str(report),
                        str(ROOT), "setuptools>=68", "wheel"], env=env, check=True)
        installs = json.loads(report.read_text())["install"]
    lines = ["# The image's Python packages (made by image/lock.py from the dev venv's versions; do not edit).",
             "# Installed with pip --require-hashes; the root project itself is then built from the",
             "# checkout with --no-deps --no-index --no-build-isolation."]
    for item in sorted(installs, key=lambda i: i["metadata"]["name"].lower()):
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name == "burnstation":
            continue
        digest = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        if not digest:
            sys.exit(f"lock: no sha256 for {name} {version} ({item['download_info'].get('url')})")
        lines.append(f"{name}=={version} \\\n    --hash=sha256:{digest}")
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"lock: {len(lines) - 3} packages in {LOCK.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
