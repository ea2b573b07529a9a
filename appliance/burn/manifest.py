"""MANIFEST.SHA: the SHA-256 of every file on a disc, so a disc (or a copy of it) can be verified.

Format is that of `sha256sum` (hex digest, two spaces, path relative to the disc root with "/"),
so `sha256sum -c MANIFEST.SHA` verifies a disc without this software. The manifest lists itself
out; it sits at the root, outside the DICOM/ tree (which holds DICOM files only).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

NAME = "MANIFEST.SHA"


def sha256_file(path: Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel = Path(dirpath).relative_to(folder)
        for name in sorted(filenames):
            path = (rel / name).as_posix()
            if path != NAME:
                out.append(path)
    return out


def write_manifest(folder: Path, known: Mapping[str, str] | None = None) -> Path:
    """Hash every file under `folder` into folder/MANIFEST.SHA (`known`: digests already computed,
    by relative path, e.g. hashed in a thread while the rest of the disc was made)."""
    known = known or {}
    lines = [f"{known.get(rel) or sha256_file(folder / rel)}  {rel}\n" for rel in _files(folder)]
    tmp = folder / (NAME + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8", newline="\n")
    tmp.replace(folder / NAME)
    return folder / NAME


def verify_tree(folder: Path) -> list[str]:
    """Problems found checking `folder` against its MANIFEST.SHA ([] when the disc is intact)."""
    manifest = folder / NAME
    if not manifest.is_file():
        return [f"{NAME} is missing"]
    problems = []
    listed: set[str] = set()
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not rel or rel.startswith("/") or ".." in rel.split("/"):
            problems.append(f"{NAME} line {number} is malformed")
            continue
        listed.add(rel)
        path = folder / rel
        if not path.is_file():
            problems.append(f"missing: {rel}")
        elif sha256_file(path) != digest:
            problems.append(f"changed: {rel}")
    problems += [f"not in manifest: {rel}" for rel in _files(folder) if rel not in listed]
    return problems
