"""The appliance image recipe: the udev rules follow the drivers' matchers, every path the recipe
names exists and mkosi 24 reads it, the image's packages are locked by hash, the units say what the
appliance needs and pass `systemd-analyze verify`, and the CPU check knows numpy's baseline.
(Building and booting the image is `make image-check`, image/check.sh: too slow for the suite.)"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IMAGE = REPO / "image"
EXTRA = IMAGE / "mkosi.extra"
UNITS = EXTRA / "usr" / "lib" / "systemd" / "system"
RULES = EXTRA / "usr" / "lib" / "udev" / "rules.d" / "70-burnstation.rules"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(UNITS / name)
    return parser


def test_udev_rules_in_sync_with_matchers():
    result = subprocess.run([sys.executable, str(IMAGE / "gen-udev-rules.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = RULES.read_text()
    assert 'ATTRS{idVendor}=="04b8"' in text and 'ENV{BURNSTATION_DEVICE}="primera"' in text
    assert 'SUBSYSTEM=="tty", ATTRS{idVendor}=="1b3d"' in text and 'GROUP="burnstation"' in text


def test_out_of_sync_rules_are_detected(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_udev_rules", IMAGE / "gen-udev-rules.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    stale = tmp_path / "70-burnstation.rules"
    stale.write_text(RULES.read_text().replace("04b8", "dead"))
    monkeypatch.setattr(gen, "RULES", stale)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and stale.read_text() == RULES.read_text()


def test_recipe_is_declarative_and_its_paths_exist():
    conf = configparser.ConfigParser(strict=False, interpolation=None)
    conf.optionxform = str
    conf.read(IMAGE / "mkosi.conf")
    assert conf["Distribution"]["Distribution"] == "debian" and conf["Distribution"]["Release"] == "bookworm"
    assert conf["Output"]["Format"]
    packages = conf["Content"]["Packages"].split()
    for needed in ("systemd", "udev", "python3", "python3-venv", "dcmtk", "xorriso"):
        assert needed in packages
    # mkosi 24 has no [Build] section (it ignores one silently) and no MachineId= setting
    assert "Build" not in conf and "MachineId" not in conf["Content"]
    assert "mkosi 24" in (IMAGE / "mkosi.conf").read_text().splitlines()[0]
    source = conf["Content"]["BuildSources"].split(":")[0]
    assert (IMAGE / source / "pyproject.toml").is_file()
    assert conf["Content"]["WithNetwork"] == "yes" and conf["Content"]["BuildSourcesEphemeral"] == "yes"
    # the bootable disk carries a kernel and systemd-boot (bootctl)
    disk = configparser.ConfigParser(strict=False, interpolation=None)
    disk.optionxform = str
    disk.read(IMAGE / "mkosi.conf.d" / "10-disk.conf")
    assert disk["Match"]["Format"] == "disk" and disk["Content"]["Bootloader"] == "systemd-boot"
    assert {"linux-image-amd64", "systemd-boot"} <= set(disk["Content"]["Packages"].split())
    # the build's apt sources: bookworm, -updates and -security only (no debian-debug)
    sources = (IMAGE / "mkosi.pkgmngr/etc/apt/sources.list.d/mkosi.sources").read_text()
    suites = [s for line in sources.splitlines() if line.startswith("Suites:") for s in line.split()[1:]]
    assert sorted(suites) == ["bookworm", "bookworm-security", "bookworm-updates"]
    assert "debug" not in sources.replace("# ", "").split("Types:", 1)[1]
    postinst = IMAGE / "mkosi.postinst.chroot"
    assert postinst.is_file() and os.access(postinst, os.X_OK)
    script = postinst.read_text()
    assert "python3 -m venv /opt/burnstation" in script and "useradd" in script
    # locked wheels by hash, then the root project alone (never the simulator), offline
    assert "--require-hashes" in script and "image/requirements.lock" in script
    assert '--no-index --no-deps \\\n    --no-build-isolation "$SRC"\n' in script
    assert "hardware-sim" not in script and "burnstation-sim" not in script
    assert "PIP_CERT" in script  # the build host's CAs, from the mounted checkout only
    for path in (UNITS / "burnstation.service", UNITS / "burnstation-firstboot.service", RULES,
                 EXTRA / "usr/lib/sysusers.d/burnstation.conf",
                 EXTRA / "usr/lib/systemd/system-preset/80-burnstation.preset"):
        assert path.is_file(), path
    preset = (EXTRA / "usr/lib/systemd/system-preset/80-burnstation.preset").read_text()
    for name in ("burnstation.service", "burnstation-firstboot.service"):
        assert f"enable {name}" in preset
    # every unit a preset enables that ships here exists
    for line in preset.splitlines():
        name = line.split()[1]
        if name.startswith("burnstation"):
            assert (UNITS / name).is_file()


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower().replace("_", "-").replace(".", "-")
            for r in requirements}


def test_lock_pins_every_runtime_dependency_by_hash():
    import tomllib

    text = (IMAGE / "requirements.lock").read_text()
    entries = re.findall(r"^([A-Za-z0-9._-]+)==(\S+) \\\n    --hash=sha256:([0-9a-f]{64})$", text, re.M)
    lines = [line for line in text.splitlines() if line and not line.startswith(("#", "    "))]
    assert len(entries) == len(lines), "every requirement is name==version with one sha256"
    locked = _requirement_names([name for name, _, _ in entries])
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = _requirement_names(project["project"]["dependencies"]) | {"setuptools", "wheel"}
    assert needed <= locked, f"not in image/requirements.lock (run make image-lock): {needed - locked}"
    assert "burnstation" not in locked


def _cpu_check(tmp_path: Path, flags: str) -> subprocess.CompletedProcess:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    script = EXTRA / "usr/lib/burnstation/cpu-check"
    return subprocess.run([str(script)], env={"CPUINFO": str(cpuinfo), "PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=30)


V2 = "fpu sse sse2 pni ssse3 cx16 sse4_1 sse4_2 popcnt lahf_lm"


def test_cpu_check_names_what_the_cpu_lacks(tmp_path):
    ok = _cpu_check(tmp_path, V2)
    assert ok.returncode == 0, ok.stderr
    # qemu's default model (qemu64) lacks SSSE3, SSE4.1, SSE4.2 and POPCNT
    old = _cpu_check(tmp_path, "fpu sse sse2 pni cx16 lahf_lm")
    assert old.returncode == 1
    assert "x86-64-v2" in old.stderr and "ssse3 sse4_1 sse4_2 popcnt" in old.stderr
    assert _cpu_check(tmp_path, V2.replace(" popcnt", "")).returncode == 1


def test_cpu_check_covers_numpys_baseline():
    """A numpy whose wheels need more than x86-64-v2 (say X86_V3) must change the check and the README."""
    from numpy._core._multiarray_umath import __cpu_baseline__

    assert set(__cpu_baseline__) <= {"SSE", "SSE2", "SSE3", "SSSE3", "SSE41", "POPCNT", "SSE42", "X86_V2"}, \
        __cpu_baseline__


def test_units_say_what_the_appliance_needs():
    main = unit("burnstation.service")
    svc, unit_sec = main["Service"], main["Unit"]
    assert svc["User"] == "burnstation" and svc["Restart"] == "on-failure"
    assert svc["ProtectSystem"] == "strict" and svc["ReadWritePaths"] == "/var/lib/burnstation"
    assert svc["PrivateTmp"] == "yes" and svc["NoNewPrivileges"] == "yes"
    assert svc["StateDirectory"] == "burnstation" and svc["KillMode"] == "mixed"
    # the station listens on every address: it must not wait (two minutes) for a network to be online
    assert "network.target" in unit_sec["After"].split() and "network-online.target" not in unit_sec["After"]
    assert "Wants" not in unit_sec
    # no station on a CPU below numpy's baseline: the CPU check runs first, every boot
    assert "burnstation-cpu.service" in unit_sec["Requires"].split()
    assert "burnstation-cpu.service" in unit_sec["After"].split()
    cpu = unit("burnstation-cpu.service")
    assert cpu["Service"]["ExecStart"] == "/usr/lib/burnstation/cpu-check" and cpu["Service"]["Type"] == "oneshot"
    assert os.access(EXTRA / "usr/lib/burnstation/cpu-check", os.X_OK)
    assert svc["ExecStart"].split()[0] == "/opt/burnstation/bin/burnstation" and svc["ExecStart"].endswith(" run")
    first = unit("burnstation-firstboot.service")
    assert first["Unit"]["ConditionPathExists"] == "!/var/lib/burnstation/settings.json"
    assert first["Service"]["ExecStart"].endswith(" init") and first["Service"]["User"] == "burnstation"
    assert "burnstation-firstboot.service" in unit_sec["After"]
    # patient data: owner only (issue 17); systemd re-applies the mode at every start
    for name in ("burnstation.service", "burnstation-firstboot.service"):
        service = unit(name)["Service"]
        assert service["StateDirectoryMode"] == "0700" and service["UMask"] == "0077", name


def test_network_apply_units_root_side_only():
    """The station stays unprivileged; the root apply unit is started by a path watch on the request
    file the station writes, runs the re-validating module isolated, and shares nothing with it."""
    from appliance import netapply, network

    path = unit("burnstation-network-apply.path")
    assert path["Path"]["PathExists"] == f"{netapply.DATA}/system/{network.REQUEST_FILE}"
    assert path["Path"]["Unit"] == netapply.APPLY_UNIT
    svc = unit(netapply.APPLY_UNIT)["Service"]
    assert "User" not in svc and svc["Type"] == "oneshot"
    assert svc["ExecStart"].split()[:4] == ["/opt/burnstation/bin/python3", "-I", "-m", "appliance.netapply"]
    assert f"/run/{svc['RuntimeDirectory']}/" + network.APPLY_STATUS.name == str(network.APPLY_STATUS)
    assert svc["RuntimeDirectoryPreserve"] == "yes" and svc["NoNewPrivileges"] == "yes"
    main = unit("burnstation.service")["Service"]
    assert main["User"] == "burnstation" and main["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert (EXTRA / str(network.IMAGE_MARKER).lstrip("/")).is_file()  # the station knows it is in the image
    preset = (EXTRA / "usr/lib/systemd/system-preset/80-burnstation.preset").read_text()
    assert "enable burnstation-network-apply.path" in preset and f"enable {netapply.APPLY_UNIT}" in preset
    conf = (IMAGE / "mkosi.conf").read_text()
    assert "        tzdata\n" in conf and "        systemd-timesyncd\n" in conf  # time zones, NTP


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here")
    exe = Path(sys.executable).parent / "burnstation"
    names = ("burnstation-cpu.service", "burnstation-firstboot.service", "burnstation.service",
             "burnstation-network-apply.service", "burnstation-network-apply.path")
    for name in names:
        # the image's paths do not exist here: point ExecStart at this checkout's venv and script
        text = (UNITS / name).read_text().replace("/opt/burnstation/bin/burnstation", str(exe))
        text = text.replace("/opt/burnstation/bin/python3", sys.executable)
        text = text.replace("/usr/lib/burnstation/cpu-check", str(EXTRA / "usr/lib/burnstation/cpu-check"))
        (tmp_path / name).write_text(text)
    result = subprocess.run([tool, "verify", *(str(tmp_path / n) for n in names)],
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    if result.returncode != 0 and ("Failed to connect" in output or "System has not been booted" in output
                                   or "Operation not permitted" in output):
        pytest.skip(f"systemd-analyze cannot run in this container: {output.strip()[:200]}")
    assert result.returncode == 0, output
    ours = [line for line in output.splitlines() if "burnstation" in line]
    assert not ours, output  # no warning about our units (unknown keys, bad values)
    # and the check is real: a bad value in our unit is reported
    bad = tmp_path / "bad.service"
    bad.write_text((tmp_path / "burnstation.service").read_text().replace("Restart=on-failure", "Restart=often"))
    result = subprocess.run([tool, "verify", str(bad)], capture_output=True, text=True, timeout=120)
    assert "restart" in (result.stdout + result.stderr).lower()


def test_the_image_installs_the_station_without_the_simulator():
    """The robot simulator is a distribution of its own (hardware-sim/), for development and tests:
    neither the root project (what the image pip-installs) nor the recipe brings it in."""
    import fnmatch
    import tomllib

    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    sim = tomllib.loads((REPO / "hardware-sim" / "pyproject.toml").read_text())
    assert "burnstation-sim" not in root["project"]["scripts"]
    find = root["tool"]["setuptools"]["packages"]["find"]
    assert find.get("where", ["."]) == ["."]
    assert not any(fnmatch.fnmatch("burnstation_sim", pattern) for pattern in find["include"])
    assert sim["project"]["scripts"]["burnstation-sim"] == "burnstation_sim.__main__:main"
    assert sim["project"]["name"] != root["project"]["name"]
    script = (IMAGE / "mkosi.postinst.chroot").read_text()
    installs = [line for line in script.splitlines() if "pip install" in line]
    assert installs and not any("hardware-sim" in line for line in installs)
    assert "burnstation-sim" not in script and "burnstation_sim" not in script
    assert "pynetdicom==3.0.4" in root["project"]["dependencies"]  # pnd_tuning's reviewed release


def test_the_simulator_distribution_stands_alone():
    """burnstation_sim is installed without the station: it imports nothing of it, and its
    declared dependencies cover the third-party modules it imports."""
    import ast
    import tomllib

    sim_dir = REPO / "hardware-sim"
    declared = {d.split(">")[0].split("<")[0].split("=")[0].strip().lower()
                for d in tomllib.loads((sim_dir / "pyproject.toml").read_text())["project"]["dependencies"]}
    dist_of = {"PIL": "pillow", "pycdlib": "pycdlib"}
    imported = set()
    for path in (sim_dir / "burnstation_sim").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    assert not imported & {"appliance", "drivers", "webui"}, imported
    third_party = imported - set(sys.stdlib_module_names) - {"burnstation_sim"}
    assert third_party <= set(dist_of), f"undeclared in hardware-sim/pyproject.toml: {third_party - set(dist_of)}"
    assert {dist_of[name] for name in third_party} <= declared
