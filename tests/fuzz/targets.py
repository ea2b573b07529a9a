"""The in-process fuzz targets: one function per parser, bytes in, AssertionError (or any unexpected
exception) when the property does not hold.

Used three ways: by atheris (tests/fuzz/run_atheris.py, coverage-guided, `make fuzz`), by the normal
suite (tests/test_fuzz_smoke.py replays the seeds, the kept corpus and every crash reproducer), and
by hand (`python tests/fuzz/run_atheris.py TARGET --replay FILE`). No atheris import here: the
structured targets cut their input with `Cursor`, so a file replays the same without the fuzzer.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import struct
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


class Cursor:
    """Reads structured values off the front of a fuzz input (the same bytes give the same values)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def pick(self, options: list[Any] | tuple[Any, ...]) -> Any:
        return options[self.byte() % len(options)]

    def chunk(self) -> bytes:
        """Bytes up to the next 0xFF separator (or the end)."""
        end = self.data.find(b"\xff", self.pos)
        end = len(self.data) if end < 0 else end
        out = self.data[self.pos:end]
        self.pos = min(len(self.data), end + 1)
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out


# --------------------------------------------------------------------------- PDU decoding


def pdu(data: bytes) -> None:
    """A PDU as the station's DUL decodes it: the library's PDU class for the type byte, then the
    primitive the state machine builds from it (the library's errors there end the association,
    anything else is a finding), then for a P-DATA command fragment the station's own C-STORE-RQ
    reader (pnd_tuning._decode_store_rq), which must never raise and must give the library's answer
    or decline."""
    from pynetdicom.dul import _PDU_TYPES
    from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF

    from appliance.dicom import pnd_tuning

    if len(data) < 6 or data[0:1] not in _PDU_TYPES:
        return
    cls, _event = _PDU_TYPES[data[0:1]]
    item = cls()
    try:
        item.decode(data)
    except Exception:
        return  # the DUL's READ_PDU_EXC_F: Evt19, an A-ABORT; handled
    try:
        primitive = item.to_primitive()
    except Exception as exc:
        if not isinstance(item, (P_DATA_TF, A_ABORT_RQ)):
            # the station's DUL checks these before the state machine (pnd_tuning._unconvertible): A-ABORT
            assert pnd_tuning._unconvertible(_Pending(item)), "an unconvertible PDU passed the DUL's check"
            return
        if isinstance(item, A_ABORT_RQ):
            return  # the peer aborted: the state machine's failure ends the association, as the abort would
        raise AssertionError(f"{cls.__name__} decodes but its primitive fails: {exc!r}") from exc
    if isinstance(item, P_DATA_TF):
        for _context_id, value in primitive.presentation_data_value_list:
            if value and value[0] & 3 == 3:
                _store_rq_matches_library(value[1:])


class _Pending:
    """What pnd_tuning._unconvertible reads of a DUL: the received PDU waiting in its queue."""

    def __init__(self, item: Any) -> None:
        import queue

        self._recv_pdu: queue.Queue[Any] = queue.Queue()
        self._recv_pdu.put(item)


def _store_rq_matches_library(command: bytes) -> None:
    from pynetdicom.dimse_messages import C_STORE_RQ

    from appliance.dicom import pnd_tuning

    fast = pnd_tuning._decode_store_rq(command)  # must never raise
    if fast is None:
        return
    message = C_STORE_RQ()
    from pydicom.filereader import read_dataset

    message.command_set = read_dataset(io.BytesIO(command), True, True)
    library = message.message_to_primitive()
    for attr in ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
                 "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID"):
        assert getattr(fast, attr) == getattr(library, attr), (attr, getattr(fast, attr), getattr(library, attr))


# --------------------------------------------------------------------------- rawparse

_TS = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.2")


def rawparse(data: bytes) -> None:
    """The station's raw index parser: never raises; whenever it answers, its index record is the
    one pydicom's decoding gives (the store handler trusts it instead of pydicom)."""
    from pydicom.dataset import Dataset
    from pydicom.filereader import read_dataset

    from appliance import index
    from appliance.dicom import rawparse as rp

    if not data:
        return
    ts = _TS[data[0] % len(_TS)]
    raw = data[1:]
    attrs = rp.parse(raw, ts)
    if attrs is None:
        return
    try:
        fast = index.record_from_dataset(attrs, "", 0, ts)
    except Exception:
        return  # the store handler then decodes with pydicom (its `_record`)
    implicit = ts == rp.IMPLICIT_LE
    try:
        ds: Dataset = read_dataset(io.BytesIO(raw), implicit, True)
        slow = index.record_from_dataset(ds, "", 0, ts)
    except Exception:
        return  # pydicom refuses what the fast parser read: the handler stores it (structure was sound)
    assert fast == slow, f"rawparse and pydicom disagree:\n fast {fast}\n slow {slow}"


# --------------------------------------------------------------------------- HL7


def hl7_message(data: bytes) -> None:
    """One HL7 frame's bytes as the order receiver takes them: decode, map to orders, build the ACK.
    Bad input must be an HL7Error (answered AE/AR with a reason), never another exception (which
    the receiver answers "AE internal error", and logs as a bug)."""
    from appliance.hl7 import message as hl7msg
    from appliance.worklist import mapping

    charset = ("ISO_IR 100", "ISO_IR 192", "ISO_IR 6")[data[0] % 3] if data else "ISO_IR 100"
    payload = data[1:]
    decoded = None
    try:
        decoded = hl7msg.decode(payload, charset)
        mapping.orders(decoded, now=1_700_000_000.0)
        code, text = "AA", ""
    except hl7msg.HL7Error as exc:
        assert exc.code in ("AE", "AR"), exc.code
        code, text = exc.code, exc.text
    ack = hl7msg.build_ack(code, control_id=decoded.control_id if decoded else hl7msg.control_id_of(payload),
                           text=text, trigger=decoded.trigger if decoded else "",
                           version=decoded.version if decoded else "2.5.1")
    assert ack.startswith("MSH|^~\\&|") and "\rMSA|" + code in ack, ack


class _FakeSocket:
    """What _Connection._serve needs of a socket: the input in pieces, the replies collected."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.sent = bytearray()

    def settimeout(self, _value: float) -> None:
        pass

    def recv(self, _size: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""

    def sendall(self, data: bytes) -> None:
        self.sent += data


def mllp(data: bytes) -> None:
    """The MLLP listener's framing (appliance/hl7/mllp.py) on input cut into arbitrary reads: it ends
    when the input does, hands on only frame contents (no start or end block inside), and answers
    each frame with exactly one framed reply."""
    from appliance.hl7 import mllp as m

    pieces: list[bytes] = []
    body = data[4:]
    cuts = sorted({b % (len(body) + 1) for b in data[:4]}) if body else []
    last = 0
    for cut in [*cuts, len(body)]:
        if cut > last:
            pieces.append(body[last:cut])
            last = cut
    frames: list[tuple[bytes, bool]] = []

    class Server:
        closing = False

        @staticmethod
        def on_frame(payload: bytes, truncated: bool, _peer: str) -> bytes:
            frames.append((payload, truncated))
            return b"ACK"

    conn = m._Connection.__new__(m._Connection)
    conn.server = Server()  # type: ignore[assignment]
    sock = _FakeSocket(pieces)
    conn._serve(sock, "fuzz")  # type: ignore[arg-type]
    for payload, _truncated in frames:
        assert m.SB not in payload and m.EB not in payload, payload[:80]
    assert bytes(sock.sent) == m.frame(b"ACK") * len(frames)


# --------------------------------------------------------------------------- the web


class _Web:
    """A WebApp on a data directory made once per process, with an admin session."""

    app: Any = None
    data: Path
    sid = ""
    csrf = ""
    logins = 0
    lock = threading.Lock()

    @classmethod
    def get(cls) -> Any:
        with cls.lock:
            if cls.app is None:
                os.environ.setdefault("BURNSTATION_TEST_SCRYPT_N", "1024")
                from appliance import cli
                from webui.app import WebApp

                folder = tempfile.mkdtemp(prefix="bs-fuzz-web-")
                atexit.register(shutil.rmtree, folder, ignore_errors=True)
                cls.data = Path(folder) / "data"
                with open(os.devnull, "w") as null:
                    old = sys.stdout
                    sys.stdout = null
                    try:
                        cli.main(["--data", str(cls.data), "init"])
                    finally:
                        sys.stdout = old
                cls.app = WebApp(cls.data)
            cls.login()
            return cls.app

    @classmethod
    def login(cls) -> None:
        from appliance import accounts

        conn = cls.app.conn()
        if cls.sid and accounts.get_session(conn, cls.sid, 3600):
            sess = accounts.get_session(conn, cls.sid, 3600)
            if sess and sess.get("role") == "admin":
                return
        cls.logins += 1
        name = f"fuzz{os.getpid()}x{cls.logins}"
        accounts.add_user(conn, name, "admin", "fuzz-pass-123")
        cls.sid, cls.csrf = accounts.new_session(conn, name, "127.0.0.1", 3600)


def web_routes() -> list[tuple[str, str]]:
    """(method, route rule) of every page and API route of the station's web app and portal."""
    app = _Web.get()
    return sorted({(r.method, r.rule) for r in app.app.routes})


# routes whose handler talks to another process or host: fuzzed through their pure parts instead
_NETWORK_ROUTES = {"/nodes/<aet>/echo"}
_CONTENT_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data; boundary=BOUNDARY",
                  "text/plain", "application/json", "multipart/form-data")


def _fill(rule: str, values: list[str]) -> str:
    import re

    out = []
    pos = 0
    for i, m in enumerate(re.finditer(r"<([^>:]+)(?::([^>:]+)(?::([^>]*))?)?>", rule)):
        out.append(rule[pos:m.start()])
        kind, arg = m.group(2), m.group(3)
        value = values[i % len(values)] if values else ""
        if kind == "int":
            value = str(sum(value.encode()) % 50)
        elif kind == "re" and arg:
            value = arg.split("|")[0]
        out.append(quote(value, safe=""))
        pos = m.end()
    out.append(rule[pos:])
    return "".join(out)


def web(data: bytes) -> None:
    """A request to any route of the web app (in process, through WSGI): any method, path value,
    query string, form body (url-encoded or multipart), cookie and header; an admin is logged in
    with a valid CSRF token so the handlers' own parsing runs. Never a 5xx."""
    app = _Web.get()
    routes = [r for r in web_routes() if r[1] not in _NETWORK_ROUTES]
    cur = Cursor(data)
    method, rule = cur.pick(routes)
    if cur.byte() % 8 == 0:
        method = cur.pick(("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"))
    params = [cur.chunk().decode("utf-8", "replace") for _ in range(2)]
    path = _fill(rule, params)
    query = cur.chunk().decode("latin-1")
    if rule == "/query":
        _query_form(query)
        query = "&".join(p for p in query.split("&") if not p.startswith("node="))  # no C-FIND to a peer
    content_type = cur.pick(_CONTENT_TYPES)
    cookie_extra = cur.chunk().decode("latin-1")
    header = cur.chunk().decode("latin-1")
    csrf_mode = cur.byte() % 4
    body = cur.rest()
    environ = {
        "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8080", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body), "wsgi.errors": io.StringIO(), "wsgi.version": (1, 0),
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
        "HTTP_COOKIE": f"bsid={_Web.sid}; {cookie_extra}" if csrf_mode != 3 else cookie_extra,
        "HTTP_X_CSRF_TOKEN": _Web.csrf if csrf_mode != 2 else header,
        "HTTP_ACCEPT_LANGUAGE": header, "HTTP_RANGE": header, "HTTP_USER_AGENT": header,
    }
    if csrf_mode == 1:
        environ["HTTP_ORIGIN"] = header
    statuses: list[str] = []

    def start_response(status: str, _headers: list[tuple[str, str]], _exc_info: Any = None) -> None:
        statuses.append(status)

    result = app.wsgi(environ, start_response)
    try:
        for _chunk in result:
            pass
    finally:
        close = getattr(result, "close", None)
        if close:
            close()
    assert statuses, "no response"
    code = int(statuses[-1].split()[0])
    assert code < 500, f"{method} {path}?{query[:200]} -> {statuses[-1]}: " \
                       f"{environ['wsgi.errors'].getvalue()[-2000:]}"


def _query_form(query: str) -> None:
    """The query page's form as C-FIND keys: a SettingError or QueryError with a reason, nothing else."""
    from urllib.parse import parse_qsl

    from appliance.config import SettingError
    from appliance.transfer import engine
    from webui.app import QUERY_LEVELS, _query_keys

    fields = dict(parse_qsl(query, keep_blank_values=True))
    q = {k: fields.get(k, "").strip() for k in ("node", "level", "name", "pid", "from", "to", "modality",
                                                   "accession", "study")}
    q["level"] = q["level"] if q["level"] in QUERY_LEVELS else "study"
    try:
        engine.build_identifier(q["level"], _query_keys(q))
    except (SettingError, engine.QueryError):
        pass


def settings(data: bytes) -> None:
    """`config set` / the settings forms: any key and text value is saved or refused with a
    SettingError (a message), and what was saved reads back as it was converted."""
    from appliance.config import SPECS, SettingError, Settings

    _Web.get()
    cur = Cursor(data)
    keys = sorted(SPECS)
    changes = {}
    for _ in range(1 + cur.byte() % 3):
        changes[cur.pick(keys)] = cur.chunk().decode("utf-8", "replace")
    s = Settings(_Web.data)
    try:
        converted = s.update(changes)
    except SettingError:
        return
    for key, value in converted.items():
        assert Settings(_Web.data).get(key) == value, key


TARGETS: dict[str, Callable[[bytes], None]] = {
    "pdu": pdu, "rawparse": rawparse, "hl7": hl7_message, "mllp": mllp, "web": web, "settings": settings,
}


# --------------------------------------------------------------------------- seeds


def seeds(target: str) -> list[bytes]:
    """A few well-formed inputs per target, so the fuzzer starts from real protocol traffic."""
    return _SEEDS[target]()


def _pdu_seeds() -> list[bytes]:
    from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
    from pynetdicom.pdu_primitives import A_ASSOCIATE

    from appliance.dicom import pnd_tuning

    out = []
    for n in (1, 3):
        rq = A_ASSOCIATE()
        rq.calling_ae_title = "FUZZ"
        rq.called_ae_title = "BURNSTATION"
        rq.application_context_name = "1.2.840.10008.3.1.1.1"
        from pynetdicom.presentation import build_context
        rq.presentation_context_definition_list = []
        for i in range(n):
            ctx = build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
            ctx.context_id = 2 * i + 1
            rq.presentation_context_definition_list.append(ctx)
        from pynetdicom.pdu_primitives import MaximumLengthNotification
        ml = MaximumLengthNotification()
        ml.maximum_length_received = 16384
        rq.user_information = [ml]
        item = A_ASSOCIATE_RQ()
        item.from_primitive(rq)
        out.append(item.encode())
    rsp_like = _store_rq_command()
    pdata = P_DATA_TF()
    pdata.presentation_data_value_list = [(1, b"\x03" + rsp_like), (1, b"\x02" + b"\x08\x00\x18\x00\x04\x00\x00\x001.2\x00")]
    out.append(pdata.encode())
    out.append(A_RELEASE_RQ().encode())
    abort = A_ABORT_RQ()
    abort.source, abort.reason_diagnostic = 0x02, 0x00
    out.append(abort.encode())
    assert pnd_tuning._decode_store_rq(rsp_like) is not None
    return out


def _store_rq_command() -> bytes:
    def el(elem: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, elem, len(value)) + value

    return b"".join([el(0x0002, b"1.2.840.10008.5.1.4.1.1.2\x00"), el(0x0100, b"\x01\x00"), el(0x0110, b"\x07\x00"),
                     el(0x0700, b"\x00\x00"), el(0x0800, b"\x00\x00"), el(0x1000, b"1.2.3.4\x00")])


def _rawparse_seeds() -> list[bytes]:
    from pydicom.filewriter import write_dataset
    sys.path.insert(0, str(REPO / "tests"))
    from support import make_dataset

    out = []
    for i, (implicit, charset, name) in enumerate([(True, None, "DOE^JOHN"), (False, "ISO_IR 100", "Müller^Jürgen"),
                                                    (False, "ISO_IR 192", "山田^太郎")]):
        ds = make_dataset(rows=2, cols=2, charset=charset, patient_name=name, seed=i)
        from pydicom.filebase import DicomBytesIO

        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_dataset(fp, ds)
        out.append(bytes([0 if implicit else 1]) + fp.getvalue())
    return out


def _hl7_seeds() -> list[bytes]:
    sys.path.insert(0, str(REPO / "tests"))
    from worklist_support import order

    out = []
    for i in range(2):
        text = order(control_id=f"SEED{i}", accession=f"A{i}")
        out.append(bytes([i]) + text.encode("latin-1" if i == 0 else "utf-8", "replace"))
    out.append(b"\x00MSH|^~\\&|RIS|H|BS|H|20240101||ORM^O01|C1|P|2.5.1\rORC|CA|P1|F1\r")
    out.append(b"\x01MSH|^~\\&|RIS|H|BS|H|20240101||ORM^O01|C2|P|2.3||||||UNICODE UTF-8\rPID|||1^^^H||DOE^J\\T\\\r")
    return out


def _mllp_seeds() -> list[bytes]:
    return [b"\x03\x09\x20\x40" + b"\x0bMSH|^~\\&|A\x1c\x0d\x0bMSH|B\x1c\x0d",
            b"\x01\x02\x03\x04\r\n\x0bMSH|x\x0bMSH|y\x1c",
            b"\x00\x00\x00\x00junk"]


def _web_seeds() -> list[bytes]:
    routes = web_routes()
    out = []
    for i, (_method, rule) in enumerate(routes):
        if rule in _NETWORK_ROUTES:
            continue
        out.append(bytes([i, 1]) + b"1.2.3\xffx\xffpage=2&q=a&level=series&from=2024-01-01\xff\xff\xff\x00"
                   + b"csrf=&name=ann&role=viewer")
    return out


def _settings_seeds() -> list[bytes]:
    from appliance.config import SPECS

    keys = sorted(SPECS)
    return [bytes([0, keys.index("dicom.aet")]) + b"STATION2\xff", bytes([1, keys.index("hl7.port"), keys.index(
        "dicom.port")]) + b"0\xff104"]


_SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "pdu": _pdu_seeds, "rawparse": _rawparse_seeds, "hl7": _hl7_seeds, "mllp": _mllp_seeds, "web": _web_seeds,
    "settings": _settings_seeds,
}
