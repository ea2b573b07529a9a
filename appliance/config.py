"""Settings: every option of the source guide, validated, stored atomically in TinyDB.

`settings.json` holds the tables `settings` (one document of key → value), `nodes` (known DICOM
nodes) and `robots`; web users and sessions live in state.db (appliance/accounts.py). Each write goes to a temp file, is fsync'd and renamed over the old
one, so a reader in another process never sees half a file; readers reload when the file changes.

Writers: SPEC names one writer of settings.json, but several processes write it: the CLI
(`burnstation config`, `robots`, `nodes`), the supervisor's station plan (robots found by
discovery or simulated, in the `robots` table) and later the web UI. Every write is a
read-modify-write under an exclusive `flock` on `<data>/.settings.lock` (`Settings._db`), so two
writers never lose each other's change; keep every write behind that lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinydb import Query, TinyDB
from tinydb.storages import Storage

from appliance import atomicfile

SETTINGS_FILE = "settings.json"


class SettingError(ValueError):
    """A setting value was refused; the message says which key and why."""


# --------------------------------------------------------------------------- validators


def _int_range(lo: int, hi: int) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool):
            raise SettingError(f"{key}: must be a whole number from {lo} to {hi}, not {value!r}")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise SettingError(f"{key}: must be a whole number from {lo} to {hi}, not {value!r}") from None
        if not lo <= number <= hi:
            raise SettingError(f"{key}: must be from {lo} to {hi}, not {number}")
        return number

    check.bad_examples = (lo - 1, hi + 1, "", "ten", "1.5")  # type: ignore[attr-defined]
    return check


def _port(key: str, value: Any) -> int:
    try:
        return _int_range(0, 65535)(key, value)
    except SettingError:
        raise SettingError(f"{key}: must be a TCP port from 1 to 65535, or 0 to close it; got {value!r}") from None


_port.bad_examples = (-1, 65536, "", "http", "80x", "1.5")  # type: ignore[attr-defined]


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{key}: must be true or false, not {value!r}")


_bool.bad_examples = ("", "maybe", "2", "ja")  # type: ignore[attr-defined]


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        text = str(value).strip()
        if text not in choices:
            raise SettingError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
        return text

    check.bad_examples = ("", "x" + choices[0], choices[0].upper() + "?")  # type: ignore[attr-defined]
    check.choices = choices  # type: ignore[attr-defined] - the web UI offers them as a list
    return check


def _choice_int(*choices: int) -> Callable[[str, Any], int]:
    def check(key: str, value: Any) -> int:
        try:
            number = int(str(value).strip())
        except ValueError:
            number = None
        if number not in choices or isinstance(value, bool):
            raise SettingError(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}")
        return number

    check.bad_examples = ("", "fast", max(choices) + 1, min(choices) - 1)  # type: ignore[attr-defined]
    check.choices = tuple(map(str, choices))  # type: ignore[attr-defined] - the web UI offers them as a list
    return check


def _text(max_len: int, *, allow_empty: bool = True) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        text = str(value)
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise SettingError(f"{key}: must not contain control characters (line breaks, tabs)")
        text = text.strip()
        if not text and not allow_empty:
            raise SettingError(f"{key}: must not be empty")
        if len(text) > max_len:
            raise SettingError(f"{key}: at most {max_len} characters, got {len(text)}")
        return text

    check.bad_examples = ("x" * (max_len + 1), "two\nlines", "tab\there") + (  # type: ignore[attr-defined]
        () if allow_empty else ("", "   "))
    return check


_AET_RE = re.compile(r"^[\x21-\x7e]+$")


def validate_aet(key: str, value: Any, *, max_len: int = 16) -> str:
    """An AE title: printable ASCII, no whitespace or backslash, 1..max_len characters."""
    text = str(value)
    if not text.strip():
        raise SettingError(f"{key}: an AE title must not be empty or all spaces")
    text = text.strip()
    if "\\" in text:
        raise SettingError(f"{key}: an AE title must not contain a backslash")
    if not _AET_RE.match(text):
        raise SettingError(
            f"{key}: an AE title may hold only printable ASCII characters without spaces, tabs or line breaks; "
            f"got {value!r}"
        )
    if len(text) > max_len:
        extra = " so that the derived titles <AET>_TE and <AET>_TP still fit 16" if max_len == 13 else ""
        raise SettingError(f"{key}: an AE title has at most {max_len} characters{extra}; {text!r} has {len(text)}")
    return text


def _station_aet(key: str, value: Any) -> str:
    return validate_aet(key, value, max_len=13)


_station_aet.bad_examples = (  # type: ignore[attr-defined]
    "", "   ", "A" * 14, "MY AET", "BACK\\SLASH", "MÜNCHEN", "TAB\tX", "LINE\nX")


def _hostname(key: str, value: Any) -> str:
    text = str(value).strip()
    if not text:
        return ""
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    if len(text) > 253 or not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?", text):
        raise SettingError(f"{key}: {value!r} is neither an IP address nor a valid host name")
    return text


_hostname.bad_examples = (  # type: ignore[attr-defined]
    "-bad-", "exa mple.org", "host_name", "a" * 254, "ex..ample", "http://x.org", "x" * 64 + ".org")


def _path(key: str, value: Any) -> str:
    text = str(value).strip()
    if any(ord(c) < 32 for c in text):
        raise SettingError(f"{key}: a path must not contain control characters")
    if text and not os.path.isabs(text):
        raise SettingError(f"{key}: must be an absolute path, got {value!r}")
    return text


_path.bad_examples = ("relative/path", "/tmp/ctl\x01x")  # type: ignore[attr-defined]


_CHARSETS = {
    "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 101": "iso8859_2", "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4", "ISO_IR 144": "iso8859_5", "ISO_IR 127": "iso8859_6", "ISO_IR 126": "iso8859_7",
    "ISO_IR 138": "iso8859_8", "ISO_IR 148": "iso8859_9", "ISO_IR 192": "utf_8", "GB18030": "gb18030",
    "GBK": "gbk", "ISO_IR 13": "shift_jis", "ISO 2022 IR 87": "iso2022_jp", "ISO 2022 IR 149": "euc_kr",
    "ISO_IR 166": "tis_620",
}
# HL7 MSH-18 names and common aliases → DICOM Specific Character Set term
CHARSET_ALIASES = {
    "ASCII": "ISO_IR 6", "8859/1": "ISO_IR 100", "8859/2": "ISO_IR 101", "8859/5": "ISO_IR 144",
    "8859/7": "ISO_IR 126", "8859/8": "ISO_IR 138", "8859/9": "ISO_IR 148", "UNICODE UTF-8": "ISO_IR 192",
    "UTF-8": "ISO_IR 192", "ISO-8859-1": "ISO_IR 100", "ISO 8859-1": "ISO_IR 100", "LATIN1": "ISO_IR 100",
    "ISO IR87": "ISO 2022 IR 87", "GB 18030-2000": "GB18030", "WINDOWS-1252": "ISO_IR 100",
}


def normalize_charset(value: str) -> str | None:
    """A DICOM Specific Character Set term for a DICOM or HL7 charset name, or None if unknown."""
    text = value.strip()
    if text in _CHARSETS:
        return text
    return CHARSET_ALIASES.get(text.upper())


def _charset(key: str, value: Any) -> str:
    term = normalize_charset(str(value))
    if term is None:
        raise SettingError(
            f"{key}: unknown character set {value!r}; use a DICOM term such as ISO_IR 100 or ISO_IR 192, "
            "or an HL7 name such as 8859/1 or UNICODE UTF-8"
        )
    return term


_charset.bad_examples = ("", "ISO_IR 999", "klingon")  # type: ignore[attr-defined]


def python_codec(charset_term: str) -> str:
    """The Python codec for a DICOM Specific Character Set term."""
    return _CHARSETS.get(charset_term, "latin_1")


# --------------------------------------------------------------------------- the settings table


@dataclass(frozen=True)
class Spec:
    """One setting: its default, its validator and a line of help for the CLI and the web UI.

    `bad_examples` are values the validator must refuse (tests try every one of them); the
    shared validators bring their own, so a key needs its own only for a custom validator.
    """

    default: Any
    check: Callable[[str, Any], Any]
    help: str
    bad_examples: tuple[Any, ...] = ()

    def refused_examples(self) -> tuple[Any, ...]:
        """Every value known to be invalid for this key (its own and its validator's)."""
        return tuple(self.bad_examples) + tuple(getattr(self.check, "bad_examples", ()))


SPECS: dict[str, Spec] = {
    # DICOM server (seed: "Configure the DICOM Server")
    "dicom.aet": Spec("BURNSTATION", _station_aet, "AE title; _E/_P/_TE/_TP titles are derived from it"),
    "dicom.port": Spec(11112, _port, "Port 1: plain DICOM (0 closes it)"),
    "dicom.tls_port": Spec(2762, _port, "Port 2: DICOM over TLS only (0 closes it)"),
    "dicom.bind": Spec("", _hostname, "address to listen on; empty = all interfaces"),
    "dicom.max_connections": Spec(4, _int_range(1, 64), "maximum concurrent outgoing associations"),
    "dicom.timeout": Spec(30, _int_range(1, 3600), "service time-out in seconds for every wait on a peer"),
    "dicom.debug": Spec(False, _bool, "write the verbose protocol log to logs/dicom-debug.log"),
    "dicom.store_from_any": Spec(True, _bool, "accept C-STORE from any node (false: known nodes only)"),
    "dicom.tls_require_client_cert": Spec(False, _bool, "TLS port: require a client certificate"),
    "dicom.tls_trusted_ca": Spec("", _path, "PEM file of CAs trusted for client certificates and TLS nodes"),
    "dicom.workers": Spec(0, _int_range(0, 16), "dicom worker processes sharing the DICOM ports "
                          "(SO_REUSEPORT): 0 = one per CPU core, at most 4"),
    "dicom.min_free_mb": Spec(500, _int_range(0, 10_000_000), "below this free space C-STORE answers A700"),
    # Burning (seed: "Automatic / Delayed automatic CD/DVD burning")
    "burn.delay_seconds": Spec(120, _int_range(1, 86400), "delay for _TE/_TP grouping, seconds"),
    "burn.group_by": Spec("patient", _choice("patient", "study"), "_TE/_TP group key: patient or study"),
    "burn.default_copies": Spec(1, _int_range(1, 100), "copies of each disc for automatic jobs"),
    "burn.verify": Spec(True, _bool, "ask the robot to read back and compare every disc"),
    "burn.keep_discs_hours": Spec(
        24, _int_range(0, 24 * 365), "hours the built disc images of a finished job are kept (0 = forever)"),
    "burn.capacity_override_kb": Spec(
        0, _int_range(0, 100_000_000), "tests only: cap every media at this many kB (0 = real capacities)"),
    # Worklist server (seed: "Configure the Worklist Server")
    "hl7.port": Spec(2575, _port, "HL7 MLLP port (0 closes it)"),
    "hl7.send_ack": Spec(True, _bool, "answer every HL7 message with an ACK"),
    "hl7.sending_application": Spec("BURNSTATION", _text(180), "MSH-3 of messages the station sends"),
    "hl7.sending_facility": Spec("", _text(180), "MSH-4 of messages the station sends"),
    "hl7.default_charset": Spec("ISO_IR 100", _charset, "character set when MSH-18 is empty"),
    "hl7.log_messages": Spec(False, _bool, "log HL7 messages and worklist C-FIND requests (debug only)"),
    "hl7.destination_host": Spec("", _hostname, "RIS to notify of order status (empty: none)"),
    "hl7.destination_port": Spec(0, _port, "RIS HL7 port"),
    "worklist.done_retention_hours": Spec(24, _int_range(0, 24 * 365), "hours a done item stays listed"),
    # HTTP server (seed: "Configure the HTTP Server", "Enable SSL", "Study accessibility")
    "http.port": Spec(8080, _port, "web port (0 closes it)"),
    "http.institution": Spec("", _text(64), "institution shown on every page and label"),
    "http.department": Spec("", _text(64), "department shown on every page and label"),
    "http.server_name": Spec("", _hostname, "web server name for token links (empty: the IP address)"),
    "http.ssl": Spec(False, _bool, "serve HTTPS with the uploaded certificate"),
    "http.zip_content": Spec(
        "dicom-jpeg-lossless", _choice("dicom-jpeg-lossless", "dicom", "jpeg"), "what patient zip files hold"
    ),
    "http.token_days": Spec(60, _int_range(1, 3650), "days a study token works, from the study date"),
    "http.token_on_disc": Spec(False, _bool, "give every burned study a patient link: label QR, README, INDEX.HTM"),
    # Supervisor and front panel (issue 5)
    "supervisor.start_seconds": Spec(3, _int_range(1, 600), "a process alive this long counts as started"),
    "supervisor.start_retries": Spec(3, _int_range(0, 100), "failed starts in a row before a process is 'failed'"),
    "panel.device": Spec("", _path, "front-panel LCD serial device (empty: found by its USB ids)"),
    "panel.baud": Spec(19200, _choice_int(9600, 19200, 38400, 57600, 115200), "front-panel LCD baud rate"),
    "panel.page_seconds": Spec(4, _int_range(1, 60), "seconds each front-panel page is shown"),
    # Retention (issue 18): what is deleted, and when, so the disk never fills
    "storage.purge_after_days": Spec(
        30, _int_range(0, 36500), "days after its last disc a fully burned study is deleted (0 = never)"),
    "storage.high_water_percent": Spec(
        90, _int_range(1, 99), "disk fuller than this: oldest burned studies are deleted first"),
    "storage.low_water_percent": Spec(
        80, _int_range(1, 98), "... until the disk is under this"),
    "storage.purge_unburned_after_days": Spec(
        0, _int_range(0, 36500), "days after its last arrival a study received on the plain AE title "
        "(archive, never burned) is deleted (0 = never)"),
    # state.db protection (issue 16): online backups in db-backup/, restored when the file is damaged
    "db.backup_hours": Spec(1, _int_range(1, 168), "hours between online backups of state.db (db-backup/)"),
}

AUTO_DICOM_WORKERS = 4  # dicom.workers = 0: one worker per CPU core, at most this many
# keys whose change needs the DICOM listeners rebound
DICOM_LISTENER_KEYS = ("dicom.aet", "dicom.port", "dicom.tls_port", "dicom.bind",
                       "dicom.tls_require_client_cert", "dicom.tls_trusted_ca")


def _cross_check(values: dict[str, Any]) -> None:
    """Rules that involve several keys."""
    ports = {
        "dicom.port": values["dicom.port"], "dicom.tls_port": values["dicom.tls_port"],
        "hl7.port": values["hl7.port"], "http.port": values["http.port"],
    }
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port and port in seen:
            if {key, seen[port]} == {"dicom.port", "dicom.tls_port"}:
                raise SettingError(
                    "dicom.tls_port: must differ from dicom.port (a port speaks either plain DICOM or TLS, "
                    f"never both); both are {port}"
                )
            raise SettingError(f"{key}: port {port} is already used by {seen[port]}")
        seen[port] = key
    if values["dicom.tls_require_client_cert"] and not values["dicom.tls_trusted_ca"]:
        raise SettingError("dicom.tls_require_client_cert: set dicom.tls_trusted_ca to the CA file first")
    if values["dicom.tls_trusted_ca"] and not os.path.isfile(values["dicom.tls_trusted_ca"]):
        raise SettingError(f"dicom.tls_trusted_ca: no such file {values['dicom.tls_trusted_ca']!r}")
    if values["dicom.tls_trusted_ca"]:
        _check_ca_file("dicom.tls_trusted_ca", values["dicom.tls_trusted_ca"])
    if values["storage.low_water_percent"] >= values["storage.high_water_percent"]:
        raise SettingError(
            f"storage.low_water_percent: must be below storage.high_water_percent "
            f"({values['storage.low_water_percent']} is not below {values['storage.high_water_percent']}): "
            "purging stops at the low mark")
    if values["hl7.destination_host"] and not values["hl7.destination_port"]:
        raise SettingError("hl7.destination_port: set it when hl7.destination_host is set")


def _check_ca_file(key: str, path: str) -> None:
    """The file must hold at least one CA certificate in PEM (else the TLS port could not open)."""
    import ssl

    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise SettingError(f"{key}: {path!r} is not a readable PEM file of CA certificates ({exc})") from None
    if not ctx.get_ca_certs():
        raise SettingError(f"{key}: {path!r} holds no CA certificate")


def parse_assignment(text: str) -> tuple[str, str]:
    """Split `key=value` from the command line."""
    if "=" not in text:
        raise SettingError(f"{text!r}: expected key=value")
    key, value = text.split("=", 1)
    return key.strip(), value


# --------------------------------------------------------------------------- nodes

SERVICES = ("echo", "store", "find", "move", "get")


@dataclass(frozen=True)
class Node:
    """A known DICOM node (seed: "Insert the information of the other DICOM nodes")."""

    aet: str
    host: str
    port: int
    tls: bool = False
    services: tuple[str, ...] = SERVICES
    description: str = ""
    retrieve: str = "move"  # how the station retrieves from it: C-MOVE to its plain AE title, or C-GET

    def to_doc(self) -> dict[str, Any]:
        return {"aet": self.aet, "host": self.host, "port": self.port, "tls": self.tls,
                "services": list(self.services), "description": self.description, "retrieve": self.retrieve}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Node:
        return cls(doc["aet"], doc["host"], int(doc["port"]), bool(doc.get("tls", False)),
                   tuple(doc.get("services", SERVICES)), doc.get("description", ""), doc.get("retrieve", "move"))

    def allows(self, service: str) -> bool:
        return service in self.services

    def addresses(self) -> set[str]:
        """The IP addresses the node's host name resolves to (empty when it does not resolve)."""
        try:
            return {info[4][0] for info in socket.getaddrinfo(self.host, None)}
        except OSError:
            return set()


def make_node(aet: str, host: str, port: Any, tls: Any = False, services: Any = None,
              description: str = "", retrieve: Any = "move") -> Node:
    """Validate and build a Node; raises SettingError with a clear message."""
    aet = validate_aet("node AE title", aet)
    if not str(host).strip():
        raise SettingError("node host: must not be empty")
    host = _hostname("node host", host)
    number = _port("node port", port)
    if number == 0:
        raise SettingError("node port: must be from 1 to 65535")
    if services is None:
        chosen: tuple[str, ...] = SERVICES
    else:
        items = [s.strip() for s in (services.split(",") if isinstance(services, str) else services) if s.strip()]
        bad = [s for s in items if s not in SERVICES]
        if bad:
            raise SettingError(f"node services: unknown {', '.join(bad)}; choose from {', '.join(SERVICES)}")
        chosen = tuple(s for s in SERVICES if s in items)
    return Node(aet, host, number, _bool("node tls", tls), chosen, _text(64)("node description", description),
                _choice("move", "get")("node retrieve", retrieve if retrieve is not None else "move"))


# --------------------------------------------------------------------------- storage


class AtomicJSONStorage(Storage):
    """TinyDB storage that replaces the file atomically (temp file, fsync, rename)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            return None
        return json.loads(text) if text.strip() else None

    def write(self, data: dict[str, Any]) -> None:
        atomicfile.write_text(self.path, json.dumps(data, indent=1, sort_keys=True), mode=0o600)  # owner only, like the whole data folder (appliance/permissions.py)

    def close(self) -> None:
        pass


class Settings:
    """The station's settings in `<data>/settings.json`, reloaded when another process changes it."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / SETTINGS_FILE
        self._lock = threading.RLock()
        self._stamp: tuple[int, int] | None = None
        self._values: dict[str, Any] = {}
        self._nodes: list[Node] = []

    # -- reading

    def exists(self) -> bool:
        return self.path.exists()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino)

    def _load(self) -> None:
        stamp = self._file_stamp()
        if stamp is not None and stamp == self._stamp:
            return
        data = AtomicJSONStorage(str(self.path)).read() or {}
        stored = next(iter(data.get("settings", {}).values()), {})
        values = {}
        for key, spec in SPECS.items():
            values[key] = stored.get(key, spec.default)
        self._values = values
        self._nodes = [Node.from_doc(doc) for doc in data.get("nodes", {}).values()]
        self._stamp = stamp

    def changed(self) -> bool:
        """True when the file changed since it was last read (cheap: one stat)."""
        return self._file_stamp() != self._stamp

    def get(self, key: str) -> Any:
        with self._lock:
            self._load()
            return self._values[key]

    def __getitem__(self, key: str) -> Any:
        return self.get(key)

    def all(self) -> dict[str, Any]:
        with self._lock:
            self._load()
            return dict(self._values)

    def nodes(self) -> list[Node]:
        with self._lock:
            self._load()
            return list(self._nodes)

    def node(self, aet: str) -> Node | None:
        for node in self.nodes():
            if node.aet == aet.strip():
                return node
        return None

    def aet(self) -> str:
        return self.get("dicom.aet")

    def dicom_workers(self) -> int:
        """How many dicom worker processes share the DICOM ports (`dicom.workers`; 0 = one per
        CPU core, at most AUTO_DICOM_WORKERS)."""
        wanted = int(self.get("dicom.workers"))
        return wanted or max(1, min(os.cpu_count() or 1, AUTO_DICOM_WORKERS))

    def derived_aets(self) -> dict[str, str]:
        """All called AE titles the station answers to, mapped to their role."""
        base = self.aet()
        return {base: "store", f"{base}_E": "epson", f"{base}_P": "primera",
                f"{base}_TE": "epson-delayed", f"{base}_TP": "primera-delayed"}

    # -- writing

    @contextlib.contextmanager
    def _db(self) -> Iterator[TinyDB]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.data_dir / ".settings.lock"
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            db = TinyDB(str(self.path), storage=AtomicJSONStorage)
            try:
                yield db
            finally:
                db.close()
                fcntl.flock(lock, fcntl.LOCK_UN)

    def validate(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Check `changes` against the current values; return the converted values or raise."""
        with self._lock:
            self._load()
            merged = dict(self._values)
        converted = {}
        for key, value in changes.items():
            if key not in SPECS:
                raise SettingError(f"{key}: no such setting (see `burnstation config show`)")
            converted[key] = SPECS[key].check(key, value)
        merged.update(converted)
        _cross_check(merged)
        return converted

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate and store several settings at once (all or nothing)."""
        converted = self.validate(changes)
        with self._lock, self._db() as db:
            table = db.table("settings")
            docs = table.all()
            # one write: truncate + insert would be two, and a reader in between saw only defaults
            if docs:
                table.update(converted, doc_ids=[docs[0].doc_id])
            else:
                table.insert(converted)
            self._stamp = None
        return converted

    def set(self, key: str, value: Any) -> Any:
        return self.update({key: value})[key]

    def initialize(self) -> None:
        """Write every default explicitly so the file documents itself."""
        with self._lock, self._db() as db:
            table = db.table("settings")
            docs = table.all()
            current = dict(docs[0]) if docs else {}
            missing = {key: spec.default for key, spec in SPECS.items() if key not in current}
            if docs:
                table.update(missing, doc_ids=[docs[0].doc_id])  # one write (see update)
            else:
                table.insert(missing)
            db.table("nodes")
            self._stamp = None

    def add_node(self, node: Node) -> None:
        with self._lock, self._db() as db:
            table = db.table("nodes")
            table.remove(Query().aet == node.aet)
            table.insert(node.to_doc())
            self._stamp = None

    def delete_node(self, aet: str) -> bool:
        with self._lock, self._db() as db:
            removed = db.table("nodes").remove(Query().aet == aet.strip())
            self._stamp = None
            return bool(removed)

    def replace_all(self, values: dict[str, Any], tables: dict[str, list[dict[str, Any]]]) -> None:
        """Replace every setting and whole tables (nodes, robots, …) in one atomic file write (a
        configuration import: a reader sees the old or the new configuration, never a mix);
        `values` must already be validated (`validate`)."""
        with self._lock, self._db():  # the settings file lock; written directly, once
            storage = AtomicJSONStorage(str(self.path))
            data = storage.read() or {}
            data["settings"] = {"1": {**{key: spec.default for key, spec in SPECS.items()}, **values}}
            for name, docs in tables.items():
                data[name] = {str(i + 1): dict(doc) for i, doc in enumerate(docs)}
            storage.write(data)
            self._stamp = None

    # -- generic tables for other subsystems (robots, users)

    def table_all(self, name: str) -> list[dict[str, Any]]:
        data = AtomicJSONStorage(str(self.path)).read() or {}
        return [dict(doc) for doc in data.get(name, {}).values()]

    @contextlib.contextmanager
    def table(self, name: str) -> Iterator[Any]:
        """Locked read-modify-write access to one TinyDB table of settings.json."""
        with self._lock, self._db() as db:
            yield db.table(name)
            self._stamp = None


def default_data_dir() -> Path:
    """`BURNSTATION_DATA`, else /var/lib/burnstation when writable, else ./var (SPEC section 3)."""
    env = os.environ.get("BURNSTATION_DATA")
    if env:
        return Path(env)
    system = Path("/var/lib/burnstation")
    if system.is_dir() and os.access(system, os.W_OK):
        return system
    return Path.cwd() / "var"
