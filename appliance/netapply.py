"""The privileged half of the network settings, in the appliance image only: run as root by
burnstation-network-apply.service (started by burnstation-network-apply.path when the station drops
`<data>/system/apply-request`, and once at boot).

The station runs unprivileged and its data folder is writable by it, so nothing it wrote is
trusted: the request file is only a signal (its token is echoed back); `network.json` and
`pending.json` are read without following links, only as regular files of the station's user (or
root) and of bounded size, and validated again here with `network.validate`; the files under /etc
are rendered here from the validated values (the station's own copies under `<data>/system/etc/`
are never copied). Nothing is written into the data folder.

The rollback is kept on this side too: while a change is pending its deadline is armed as a
transient systemd timer that starts this unit again, and a run after the deadline installs the
`previous` settings, so an unconfirmed address change comes back even with the station stopped.
The outcome goes to network.APPLY_STATUS (root-owned, world-readable), which `network show` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from appliance import atomicfile, network
from appliance.config import SettingError

LOG = logging.getLogger("burnstation.netapply")
DATA = Path("/var/lib/burnstation")
MAX_BYTES = 64 * 1024
ROLLBACK_UNIT = "burnstation-network-rollback"
APPLY_UNIT = "burnstation-network-apply.service"

Runner = Callable[[list[str]], Any]


class Refused(Exception):
    """A file the apply step will not take (foreign owner, a link, not a regular file, too big, bad JSON)."""


def read_trusted(path: Path, owners: set[int], limit: int = MAX_BYTES) -> bytes | None:
    """The bytes of `path`, or None when it does not exist; Refused unless it is a regular file,
    not a link, owned by one of `owners`, at most `limit` bytes (O_NONBLOCK: a FIFO cannot hang us)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        raise Refused(f"{path}: not opened ({exc.strerror}); a link is never followed") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{path}: not a regular file")
        if st.st_nlink != 1:  # a hard link to some other file (of root's, say) is not the station's file
            raise Refused(f"{path}: has {st.st_nlink} names (a hard link)")
        if st.st_uid not in owners:
            raise Refused(f"{path}: owned by uid {st.st_uid}, not by the station's user or root")
        if st.st_size > limit:
            raise Refused(f"{path}: {st.st_size} bytes, more than {limit}")
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise Refused(f"{path}: more than {limit} bytes")
        return data
    finally:
        os.close(fd)


def _json_object(path: Path, owners: set[int]) -> dict[str, Any] | None:
    data = read_trusted(path, owners)
    if data is None:
        return None
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(f"{path}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise Refused(f"{path}: not a JSON object")
    return value


def _checked(values: Any, where: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise Refused(f"{where}: not a JSON object of network settings")
    try:
        return network.validate(values)
    except SettingError as exc:
        raise Refused(f"{where}: {exc}") from None


def desired(data_dir: Path, now: float, owners: set[int]) -> tuple[dict[str, Any] | None, float | None, bool]:
    """(values to install, the pending deadline still ahead or None, whether it is a rollback).

    None values: the station has never set the network (the image's DHCP default stays).
    """
    system = data_dir / "system"
    stored = _json_object(system / "network.json", owners)
    pending = _json_object(system / "pending.json", owners)
    if pending is not None:
        deadline = pending.get("deadline")
        if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not math.isfinite(deadline):
            raise Refused(f"{system / 'pending.json'}: no valid deadline")
        if now >= deadline:  # not confirmed in time: the settings from before the change
            return _checked(pending.get("previous"), "pending.json previous"), None, True
        # never further away than one full period, whatever the file says
        deadline = min(float(deadline), now + network.ROLLBACK_SECONDS)
        return (_checked(stored, "network.json") if stored is not None else None), deadline, False
    return (_checked(stored, "network.json") if stored is not None else None), None, False


def install(values: dict[str, Any], etc: Path, zoneinfo: Path = network.ZONEINFO) -> list[str]:
    """Write the rendered files under `etc` (root's, 0644) where they differ; returns what changed."""
    changed = []
    for rel, text in network.render(values).items():
        path = etc / rel
        try:
            same = path.read_text(encoding="utf-8") == text and not path.is_symlink()
        except (FileNotFoundError, UnicodeDecodeError):
            same = False
        if not same:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomicfile.write_text(path, text, mode=0o644)
            changed.append(rel)
    zone = zoneinfo / values["timezone"]
    localtime = etc / "localtime"
    with contextlib.suppress(OSError):
        if os.readlink(localtime) == str(zone):
            return changed
    tmp = etc / ".localtime.burnstation"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(zone, tmp)
    os.replace(tmp, localtime)
    changed.append("localtime")
    return changed


def _run(cmd: list[str]) -> Any:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True)


def _ifnames() -> list[str]:
    """The links of this network namespace (not /sys/class/net, which a container may show from another)."""
    try:
        return sorted(name for _, name in socket.if_nameindex() if name != "lo")
    except OSError:
        return []


def activate(values: dict[str, Any], changed: list[str], run: Runner = _run,
             sethostname: Callable[[str], None] = socket.sethostname) -> list[str]:
    """Make the running system take the changed files; returns what failed (the files stay right)."""
    errors = []

    def attempt(what: str, action: Callable[[], Any]) -> None:
        try:
            action()
        except subprocess.CalledProcessError as exc:
            errors.append(f"{what}: {(exc.stderr or exc.stdout or str(exc)).strip()}")
        except Exception as exc:  # report, keep going: the files are right for the next boot
            errors.append(f"{what}: {exc}")

    if "hostname" in changed:
        attempt("hostname", lambda: sethostname(values["hostname"]))
    if network.NETWORK_FILE in changed:
        attempt("networkctl reload", lambda: run(["networkctl", "reload"]))
        names = _ifnames()
        if names:
            attempt("networkctl reconfigure", lambda: run(["networkctl", "reconfigure", *names]))
    if network.TIMESYNC_FILE in changed:
        attempt("timesyncd", lambda: run(["systemctl", "try-restart", "systemd-timesyncd.service"]))
    for error in errors:
        LOG.error("could not apply: %s", error)
    return errors


def arm_rollback(deadline: float | None, now: float, run: Runner = _run) -> None:
    """A transient timer that starts this unit again at `deadline` (None: drop any such timer)."""
    with contextlib.suppress(Exception):
        run(["systemctl", "stop", f"{ROLLBACK_UNIT}.timer"])
    if deadline is None:
        return
    seconds = max(1, math.ceil(deadline - now))
    run(["systemd-run", "--quiet", f"--unit={ROLLBACK_UNIT}", f"--on-active={seconds}s",
         "--timer-property=AccuracySec=1s", "systemctl", "start", "--no-block", APPLY_UNIT])


def take_request(system: Path, owners: set[int]) -> str | None:
    """The station's request token, the file removed first (a request written after this starts the unit again)."""
    request = system / network.REQUEST_FILE
    taken = system / ".apply-request.taken"
    try:
        os.rename(request, taken)  # renames the entry itself, never what a link points to
    except FileNotFoundError:
        return None
    except OSError as exc:  # e.g. a directory in the way: the unit's start limit stops a loop
        LOG.error("request %s not taken: %s", request, exc)
        return None
    try:
        data = read_trusted(taken, owners, limit=256) or b""
    except Refused as exc:
        LOG.error("request refused: %s", exc)
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            taken.unlink()
    token = data.decode("ascii", "replace").strip()
    return token if token.isalnum() and len(token) <= 64 else None


def apply(data_dir: Path = DATA, etc: Path = Path("/etc"), status_path: Path = network.APPLY_STATUS,
          now: Callable[[], float] = time.time, run: Runner = _run,
          sethostname: Callable[[str], None] = socket.sethostname, owners: set[int] | None = None) -> dict[str, Any]:
    """One run of the apply unit; returns (and writes) its status."""
    owners = owners if owners is not None else {0, os.stat(data_dir).st_uid}
    token = take_request(data_dir / "system", owners)
    at = now()
    status: dict[str, Any] = {"token": token, "time": at, "errors": [], "changed": [], "rolled_back": False,
                              "pending_deadline": None, "values": None}
    try:
        values, deadline, rolled_back = desired(data_dir, at, owners)
    except Refused as exc:
        LOG.error("refused, nothing changed: %s", exc)
        status["errors"] = [f"refused, nothing changed: {exc}"]
        values, deadline, rolled_back = None, None, False
    else:
        status.update(values=values, pending_deadline=deadline, rolled_back=rolled_back)
        if values is not None:
            try:
                status["changed"] = install(values, etc)
            except OSError as exc:
                status["errors"] = [f"installing under {etc}: {exc}"]
            else:
                status["errors"] = activate(values, status["changed"], run, sethostname)
            if rolled_back:
                LOG.warning("address change not confirmed in time: previous settings installed")
            LOG.info("network settings installed (changed: %s)", ", ".join(status["changed"]) or "nothing")
        try:
            arm_rollback(deadline, at, run)
        except Exception as exc:
            status["errors"].append(f"rollback timer: {exc}")
    status_path.parent.mkdir(parents=True, exist_ok=True)
    atomicfile.write_text(status_path, json.dumps(status, indent=1, sort_keys=True), mode=0o644)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.netapply",
                                     description="apply the station's network settings (root, appliance image)")
    parser.add_argument("--data", default=str(DATA))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if os.geteuid() != 0:
        print("netapply: must run as root (burnstation-network-apply.service)", file=sys.stderr)
        return 2
    status = apply(Path(args.data))
    return 1 if status["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
