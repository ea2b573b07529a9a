"""Forwarding rules: settings (the `forward_rules` table of settings.json), validated on the way in.

A rule says: everything received on `called` (a station AE title, or any when empty), optionally
only from `calling` and only of `modalities`, is sent to the known node `node` once its study has
been quiet for `delay` seconds (the same stability idea as the burn delay).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from tinydb import Query

from appliance.config import SettingError, Settings, validate_aet

TABLE = "forward_rules"
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MODALITY_RE = re.compile(r"^[A-Z0-9]{1,16}$")
DEFAULT_DELAY = 30


@dataclass(frozen=True)
class Rule:
    name: str
    node: str
    called: str = ""
    calling: str = ""
    modalities: tuple[str, ...] = ()
    delay: int = DEFAULT_DELAY

    def to_doc(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["modalities"] = list(self.modalities)
        return doc

    def describe(self) -> str:
        parts = [f"received on {self.called or 'any AE title'}"]
        if self.calling:
            parts.append(f"from {self.calling}")
        if self.modalities:
            parts.append(f"modality {','.join(self.modalities)}")
        return f"{' '.join(parts)} → {self.node} after {self.delay}s quiet"


def make_rule(settings: Settings, *, node: str, name: str | None = None, called: str | None = None,
              calling: str | None = None, modalities: Any = None, delay: Any = DEFAULT_DELAY) -> Rule:
    """Validate a rule against the settings (the node must be known and take C-STORE)."""
    known = settings.node(node or "")
    if known is None:
        raise SettingError(f"forward node: {node!r} is not a known node (add it with `burnstation nodes add`)")
    if not known.allows("store"):
        raise SettingError(f"forward node: {known.aet} is not allowed the store service")
    name = (name or known.aet).strip()
    if not NAME_RE.match(name):
        raise SettingError(f"forward name: 1 to 32 letters, digits, '-' or '_', not {name!r}")
    called = validate_aet("forward called", called) if called and called.strip() else ""
    if called and called not in settings.derived_aets():
        raise SettingError(f"forward called: {called!r} is not one of the station's AE titles "
                           f"({', '.join(settings.derived_aets())})")
    calling = validate_aet("forward calling", calling) if calling and calling.strip() else ""
    if isinstance(modalities, str):
        modalities = modalities.split(",")
    mods = tuple(dict.fromkeys(m.strip().upper() for m in (modalities or []) if m.strip()))
    bad = [m for m in mods if not MODALITY_RE.match(m)]
    if bad:
        raise SettingError(f"forward modality: {', '.join(bad)} is not a modality code such as CT or MR")
    try:
        seconds = int(str(delay).strip())
    except ValueError:
        raise SettingError(f"forward delay: a whole number of seconds from 0 to 86400, not {delay!r}") from None
    if not 0 <= seconds <= 86400:
        raise SettingError(f"forward delay: from 0 to 86400 seconds, not {seconds}")
    return Rule(name, known.aet, called, calling, mods, seconds)


def check_rules(docs: Any, settings: Any) -> list[Rule]:
    """Validate exported rules whole (each as by `forward add`; no name twice) against `settings`: the
    station's, or a configuration import's staged view of them (anything with node() and derived_aets())."""
    if not isinstance(docs, list):
        raise SettingError("expected a list of rules")
    out: list[Rule] = []
    for i, doc in enumerate(docs, 1):
        if not isinstance(doc, dict):
            raise SettingError(f"entry {i} is not a rule")
        unknown = sorted(set(doc) - {"name", "node", "called", "calling", "modalities", "delay"})
        if unknown:
            raise SettingError(f"entry {i} ({doc.get('name')!r}): unknown field(s) {', '.join(unknown)}")
        modalities = doc.get("modalities") or []
        try:
            if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
                raise SettingError("forward modality: expected a list of modality codes")
            rule = make_rule(settings, node=str(doc.get("node", "")), name=str(doc.get("name", "")),
                             called=str(doc.get("called") or ""), calling=str(doc.get("calling") or ""),
                             modalities=modalities, delay=doc.get("delay", DEFAULT_DELAY))
        except SettingError as exc:
            raise SettingError(f"entry {i} ({doc.get('name')!r}): {exc}") from None
        if rule.name in {r.name for r in out}:
            raise SettingError(f"{rule.name} appears twice")
        out.append(rule)
    return out


def list_rules(settings: Settings) -> list[Rule]:
    out = []
    for doc in settings.table_all(TABLE):
        out.append(Rule(doc["name"], doc["node"], doc.get("called", ""), doc.get("calling", ""),
                        tuple(doc.get("modalities", ())), int(doc.get("delay", DEFAULT_DELAY))))
    return sorted(out, key=lambda r: r.name)


def add_rule(settings: Settings, rule: Rule) -> None:
    with settings.table(TABLE) as table:
        if table.search(Query().name == rule.name):
            raise SettingError(f"forward name: a rule {rule.name!r} exists already (delete it first)")
        table.insert(rule.to_doc())


def delete_rule(settings: Settings, name: str) -> bool:
    with settings.table(TABLE) as table:
        return bool(table.remove(Query().name == name))
