"""Configuration backup: `burnstation config export FILE` / `config import FILE`.

A replacement box runs the old box's setup in minutes. The file is JSON, sectioned and versioned:

    {"format": "burnstation-config", "version": 1, "exported_at": "...", "from": {...},
     "sha256": "<of the canonical sections>", "sections": {"settings": {...}, "nodes": [...], ...}}

Sections now: settings (with the trusted-CA certificates a setting points to, which are public),
nodes, robots, network, forward_rules, users (name, role, password hash; left out while the
station has no user). Never in it: patient data (state.db, storage/), device keys (tls/), tokens,
plain passwords or web sessions. A subsystem adds a section with an entry in SECTIONS (an
exporter, a validator that raises SettingError) and its step in import_config.

An import is validated whole before anything changes: a corrupt file, a foreign one, one made by
a newer version, a section this version does not know, or any invalid value (a malformed password
hash, an unknown role, a rule naming a node the import does not keep) is refused with its reason
and nothing is changed. The users are then replaced in one state.db transaction (every session
ends), and settings, nodes, robots and rules in one atomic write of settings.json.

The version stays 1: files without forward_rules or users (made before those sections) are still
read; then this station's users and rules are kept (its rules must still name an imported node).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import accounts, atomicfile, db, network, trail
from appliance.burn import robots
from appliance.config import SPECS, Node, SettingError, Settings, make_node
from appliance.transfer import jobs, rules

FORMAT = "burnstation-config"
VERSION = 1
IMPORTED_CA = "trusted-ca-imported.pem"  # in <data>/tls/


def _digest(sections: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(sections, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------- sections


def _export_settings(settings: Settings) -> dict[str, Any]:
    values = settings.all()
    out: dict[str, Any] = {"values": values}
    ca = values.get("dicom.tls_trusted_ca")
    if ca and os.path.isfile(ca):
        out["trusted_ca_pem"] = Path(ca).read_text(encoding="ascii", errors="replace")
    return out


def _check_settings(section: Any, settings: Settings, staged: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(section, dict) or not isinstance(section.get("values"), dict):
        raise SettingError("settings section: expected {\"values\": {key: value}}")
    values = dict(section["values"])
    pem = section.get("trusted_ca_pem")
    if values.get("dicom.tls_trusted_ca"):
        if not isinstance(pem, str) or "BEGIN CERTIFICATE" not in pem:
            raise SettingError("settings: dicom.tls_trusted_ca is set but the file holds no CA certificate for it")
        tmp = settings.data_dir / "tls" / f".{IMPORTED_CA}.{os.getpid()}.check"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        atomicfile.write_text(tmp, pem, mode=0o600)
        staged["ca_tmp"] = tmp
        values["dicom.tls_trusted_ca"] = str(tmp)
    for key in SPECS:
        values.setdefault(key, SPECS[key].default)  # a key added since the export: its default
    converted = settings.validate(values)  # every key (unknown ones refused), then the cross-key rules
    if staged.get("ca_tmp"):
        converted["dicom.tls_trusted_ca"] = str(settings.data_dir / "tls" / IMPORTED_CA)
    staged["values"] = converted
    return converted


def _check_nodes(section: Any, settings: Settings, staged: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(section, list):
        raise SettingError("nodes section: expected a list of nodes")
    docs, seen, nodes = [], set(), []
    for i, doc in enumerate(section, 1):
        if not isinstance(doc, dict):
            raise SettingError(f"nodes: entry {i} is not a node")
        try:
            node = make_node(doc.get("aet", ""), doc.get("host", ""), doc.get("port", ""), doc.get("tls", False),
                             doc.get("services"), doc.get("description", ""))
        except SettingError as exc:
            raise SettingError(f"nodes: entry {i} ({doc.get('aet')!r}): {exc}") from None
        if node.aet in seen:
            raise SettingError(f"nodes: {node.aet} appears twice")
        seen.add(node.aet)
        nodes.append(node)
        docs.append(node.to_doc())
    staged["nodes"] = nodes
    return docs


def _check_robots(section: Any, settings: Settings, staged: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(section, list):
        raise SettingError("robots section: expected a list of robots")
    docs, seen = [], set()
    for i, doc in enumerate(section, 1):
        if not isinstance(doc, dict):
            raise SettingError(f"robots: entry {i} is not a robot")
        try:
            checked = robots.validate_robot(doc)
        except SettingError as exc:
            raise SettingError(f"robots: entry {i} ({doc.get('name')!r}): {exc}") from None
        if checked["name"] in seen:
            raise SettingError(f"robots: {checked['name']} appears twice")
        seen.add(checked["name"])
        docs.append(checked)
    return docs


def _check_network(section: Any, settings: Settings, staged: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise SettingError("network section: expected {key: value}")
    try:
        return network.validate(section)
    except SettingError as exc:
        raise SettingError(f"network: {exc}") from None


class _Staged:
    """The nodes and AE titles the station will have after the import, for checking forwarding rules."""

    def __init__(self, settings: Settings, staged: dict[str, Any]) -> None:
        self._nodes: list[Node] = staged["nodes"] if "nodes" in staged else settings.nodes()
        self._aet = str(staged["values"]["dicom.aet"]) if "values" in staged else settings.aet()

    def node(self, aet: str) -> Node | None:
        return next((n for n in self._nodes if n.aet == aet.strip()), None)

    def aet(self) -> str:
        return self._aet

    derived_aets = Settings.derived_aets  # uses only aet()


def _check_rules(section: Any, settings: Settings, staged: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return [r.to_doc() for r in rules.check_rules(section, _Staged(settings, staged))]
    except SettingError as exc:
        raise SettingError(f"forward_rules: {exc}") from None


def _export_users(settings: Settings) -> list[dict[str, Any]] | None:
    conn = db.connect(settings.data_dir)
    try:
        return accounts.export_users(conn) or None  # no user yet: no section (an import keeps the users)
    finally:
        conn.close()


def _check_users(section: Any, settings: Settings, staged: dict[str, Any]) -> list[dict[str, str]]:
    try:
        return accounts.check_user_rows(section)
    except accounts.AccountError as exc:
        raise SettingError(f"users: {exc}") from None


@dataclass(frozen=True)
class Section:
    export: Callable[[Settings], Any]
    check: Callable[[Any, Settings, dict[str, Any]], Any]


SECTIONS: dict[str, Section] = {
    "settings": Section(_export_settings, _check_settings),
    "nodes": Section(lambda s: [n.to_doc() for n in s.nodes()], _check_nodes),
    "robots": Section(robots.list_robots, _check_robots),
    "network": Section(lambda s: network.Network(s.data_dir).current(), _check_network),
    "forward_rules": Section(lambda s: [r.to_doc() for r in rules.list_rules(s)], _check_rules),  # after nodes
    "users": Section(_export_users, _check_users),
}


# --------------------------------------------------------------------------- export / import


def export_config(settings: Settings, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the configuration to `path` (owner-only); returns the document."""
    exported = {name: section.export(settings) for name, section in SECTIONS.items()}
    sections = {name: value for name, value in exported.items() if value is not None}
    doc = {"format": FORMAT, "version": VERSION, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "from": {"aet": settings.aet(), "hostname": sections["network"]["hostname"]},
           "sha256": _digest(sections), "sections": sections}
    atomicfile.write_text(path, json.dumps(doc, indent=1, sort_keys=True) + "\n", mode=0o600)
    return doc


def read_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sections of a configuration file, or SettingError when it is not a whole, known one."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SettingError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SettingError(f"{path}: not a BurnStation configuration file (corrupt or not JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SettingError(f"{path}: not a BurnStation configuration file (format is not {FORMAT!r})")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise SettingError(f"{path}: configuration file without a valid version")
    if version > VERSION:
        raise SettingError(f"{path}: made by a newer BurnStation (format version {version}; this one reads "
                           f"up to {VERSION}); update this station first")
    sections = doc.get("sections")
    if not isinstance(sections, dict):
        raise SettingError(f"{path}: configuration file without sections")
    if doc.get("sha256") != _digest(sections):
        raise SettingError(f"{path}: the file was changed or damaged after export (checksum mismatch)")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SettingError(f"{path}: sections this station does not know: {', '.join(unknown)} "
                           "(made by a newer BurnStation?); nothing imported")
    return sections


def import_config(settings: Settings, path: str | os.PathLike[str]) -> dict[str, int]:
    """Validate every section of the file, then replace this station's configuration with it."""
    sections = read_file(path)
    staged: dict[str, Any] = {}
    try:  # in SECTIONS order: the rules are checked against the imported nodes and AE title
        checked = {name: SECTIONS[name].check(sections[name], settings, staged) for name in SECTIONS
                   if name in sections}
        if "forward_rules" not in checked:  # an older file: this station's rules stay, if still valid
            try:
                rules.check_rules([r.to_doc() for r in rules.list_rules(settings)], _Staged(settings, staged))
            except SettingError as exc:
                raise SettingError(f"this station's forwarding rules (the file has none): {exc}; "
                                   "delete the rule first (`burnstation forward delete`)") from None
    except BaseException:
        if staged.get("ca_tmp"):
            Path(staged["ca_tmp"]).unlink(missing_ok=True)
        raise
    if staged.get("ca_tmp"):
        os.replace(staged["ca_tmp"], settings.data_dir / "tls" / IMPORTED_CA)
    old_rules = {r.name for r in rules.list_rules(settings)}
    conn = db.connect(settings.data_dir)
    try:
        if "users" in checked:
            accounts.replace_users(conn, checked["users"])
            accounts.setup_code_path(settings.data_dir).unlink(missing_ok=True)  # users exist: setup is over
        values = checked.get("settings", settings.all())
        tables = {name: checked[name] for name in ("nodes", "robots", rules.TABLE) if name in checked}
        settings.replace_all(values, tables)
        if rules.TABLE in checked:
            new_rules = {doc["name"] for doc in checked[rules.TABLE]}
            for name in sorted(new_rules - old_rules):
                jobs.start_cursor(conn, name)  # forwards what arrives from now on, as `forward add`
            for name in sorted(old_rules - new_rules):
                jobs.forget_rule(conn, name)
    finally:
        conn.close()
    if "network" in checked:
        network.Network(settings.data_dir).set(checked["network"])
    counts = {name: (len(v) if isinstance(v, list) else 1) for name, v in checked.items()}
    trail.record("config.imported", str(path), {"sections": counts}, settings.data_dir, actor="admin")
    return counts
