"""Local spool paths as the vendor engine (perhaps on a Windows host) sees them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from drivers.common.values import checked_path


def is_windows_path(path: str) -> bool:
    return path.startswith("\\\\") or bool(re.match(r"^[A-Za-z]:", path)) or ("\\" in path and "/" not in path)


@dataclass
class EnginePathMap:
    """Local paths under `local_root` as the vendor engine sees them under `engine_root`.

    `engine_root` empty: the engine sees our paths as they are. A Windows-style root
    (`\\\\host\\share\\spool`, `Z:\\spool`) gets backslashes, anything else forward slashes.
    """

    local_root: Path
    engine_root: str = ""

    def to_engine(self, path: Path, what: str = "path") -> str:
        path = Path(os.path.abspath(path))
        if not self.engine_root:
            return checked_path(str(path), what)
        local = Path(os.path.abspath(self.local_root))
        try:
            rel = path.relative_to(local)
        except ValueError:
            raise ValueError(f"{what}: {path} is outside the spool folder {local}; the engine "
                             f"(which sees that folder as {self.engine_root}) cannot read it") from None
        sep = "\\" if is_windows_path(self.engine_root) else "/"
        root = self.engine_root
        parts = PurePosixPath(rel.as_posix()).parts
        if not parts:
            return checked_path(root, what)
        if not root.endswith(sep):
            root += sep
        return checked_path(root + sep.join(parts), what)

    @property
    def engine_sep(self) -> str:
        return "\\" if self.engine_root and is_windows_path(self.engine_root) else "/"
