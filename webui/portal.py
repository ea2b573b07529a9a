"""The patient portal: `/token?<64 characters>` opens one study, its previews and its downloads.

A bottle app of its own so the technician app can take its routes with one line
(`app.merge(portal_app(data_dir))`; merged routes keep this app's plugin, so the headers below
come with them). The token link is exchanged for an HttpOnly cookie scoped to /portal and a
redirect to the neutral /portal/ (the token leaves the address bar and history, and never goes
out in a Referer). Every request under /portal checks the token again: a revocation takes effect
at once. The study comes from the token alone; URLs carry only series and image counters of that
study, so no URL can reach another study. Unknown, malformed and revoked tokens get one page
(404); an expired one says since when (410); an address that keeps presenting bad tokens is
throttled (429).
"""

from __future__ import annotations

import collections
import datetime as dt
import io
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bottle

from appliance import db
from appliance import index as _index  # noqa: F401 - registers the study tables
from appliance.burn.text import dicom_date
from appliance.config import Settings
from appliance.portal import tokens

# render and zips (pydicom, numpy, PIL) are imported by the routes that use them: the web process
# starts without them (tests/test_service_imports.py)
if TYPE_CHECKING:
    from appliance.burn.catalog import InstanceInfo
    from appliance.portal import zips

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
TEMPLATES = str(HERE / "templates")
STATIC = HERE / "static"
COOKIE = "portal_token"
PORTAL = "/portal"
CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; form-action 'none'; frame-ancestors 'none'; "
       "base-uri 'none'")
FORMAT_LABELS = {"dicom-jpeg-lossless": "DICOM, JPEG lossless (smaller)", "dicom": "DICOM as stored",
                 "jpeg": "JPEG pictures"}
BAD_LIMIT = 10  # bad tokens from one address ...
BAD_WINDOW = 600.0  # ... within this many seconds, then 429 until the window has passed


def loggable_path(environ: dict[str, Any]) -> str:
    """The request path for an access log: never the query of /token (it is the token)."""
    path = environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    if path.rstrip("/") == "/token" or not query:
        return path
    return f"{path}?{query}"


class Throttle:
    """Bad-token counts per client address in a sliding window (in memory: a restart forgets)."""

    def __init__(self, clock: Callable[[], float], limit: int = BAD_LIMIT, window: float = BAD_WINDOW) -> None:
        self.clock, self.limit, self.window = clock, limit, window
        self.failures: dict[str, collections.deque[float]] = {}
        self.lock = threading.Lock()

    def _recent(self, address: str) -> collections.deque[float]:
        times = self.failures.setdefault(address, collections.deque())
        while times and times[0] <= self.clock() - self.window:
            times.popleft()
        return times

    def blocked(self, address: str) -> float:
        """Seconds until `address` may try again (0: not blocked)."""
        with self.lock:
            times = self._recent(address)
            return times[0] + self.window - self.clock() if len(times) >= self.limit else 0.0

    def fail(self, address: str) -> None:
        with self.lock:
            self._recent(address).append(self.clock())
            if len(self.failures) > 10000:  # a scan from many addresses must not grow memory without end
                for key in [k for k, v in self.failures.items() if not v][:5000]:
                    del self.failures[key]


def _headers(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Plugin of every portal route: no caching, no Referer, a strict CSP."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        body = callback(*args, **kwargs)
        response = bottle.response
        response.set_header("Cache-Control", "no-store")
        response.set_header("Referrer-Policy", "no-referrer")
        response.set_header("X-Content-Type-Options", "nosniff")
        response.set_header("Content-Security-Policy", CSP)
        response.set_header("X-Frame-Options", "DENY")
        return body

    return wrapper


def _page(name: str, status: int = 200, **values: Any) -> str:
    bottle.response.status = status
    bottle.response.content_type = "text/html; charset=utf-8"
    return bottle.template(name, template_lookup=[TEMPLATES], **values)


def portal_app(data_dir: str | Path, clock: Callable[[], float] = time.time) -> bottle.Bottle:
    """The portal's routes (/token, /portal/...) for one station data folder; `clock` for tests."""
    data_dir = Path(data_dir)
    app = bottle.Bottle()
    app.install(_headers)
    throttle = Throttle(clock)

    def address() -> str:
        return bottle.request.remote_addr or ""

    station_settings = Settings(data_dir)  # rereads the file when another process changed it

    def settings() -> dict[str, Any]:
        return station_settings.all()

    def header_values(study: InstanceInfo | None = None) -> dict[str, str]:
        values = settings()
        return {"institution": values.get("http.institution") or (study.institution if study else ""),
                "department": values.get("http.department") or ""}

    def not_valid(presented: str) -> str:
        if presented:  # no token at all (a bookmark of /portal/ after the cookie ended) is no guess
            throttle.fail(address())
        return _page("portal_message", 404, title="This link is not valid",
                     message="This link is not valid. Please check it, or ask the department that gave it to you.",
                     **header_values())

    def refused(wait: float) -> str:
        bottle.response.set_header("Retry-After", str(max(1, int(wait + 0.999))))
        return _page("portal_message", 429, title="Too many attempts",
                     message="Too many links that are not valid came from your address. Please wait a few "
                             "minutes and try again.", **header_values())

    def expired(check: tokens.Check) -> str:
        return _page("portal_message", 410, title="This link has expired",
                     message=f"This link expired on {check.expired_on}. Please ask the department that gave "
                             "it to you for a new one.", **header_values())

    def checked(presented: str) -> tuple[tokens.Check | None, str | None]:
        """(a valid check, None) or (None, the page to answer with)."""
        wait = throttle.blocked(address())
        if wait:
            return None, refused(wait)
        conn = db.connect(data_dir)
        try:
            check = tokens.check(conn, presented, clock=clock)
        finally:
            conn.close()
        if check.state == "valid":
            return check, None
        return None, expired(check) if check.state == "expired" else not_valid(presented)

    def record(check: tokens.Check, what: str) -> None:
        conn = db.connect(data_dir)
        try:
            tokens.record_use(conn, check.token.id, address(), what, clock=clock)  # type: ignore[union-attr]
        finally:
            conn.close()

    def study_of(check: tokens.Check) -> list[InstanceInfo]:
        """The token's study ([] when it is gone, or a file of it went missing under us)."""
        from appliance.burn.catalog import BuildError
        from appliance.portal import zips

        conn = db.connect(data_dir)
        try:
            return zips.study_instances(conn, check.token.study_uid)  # type: ignore[union-attr]
        except BuildError as exc:
            log.warning("portal: study of token %s unreadable: %s", check.token.id, exc)  # type: ignore[union-attr]
            return []
        finally:
            conn.close()

    def from_cookie() -> tuple[tokens.Check | None, str | None]:
        return checked(bottle.request.get_cookie(COOKIE) or "")

    @app.get("/token")
    def token_link() -> str:
        check, page = checked(bottle.request.query_string)
        if page is not None:
            return page
        assert check is not None
        record(check, "open link")
        secure = bottle.request.urlparts.scheme == "https" or bool(settings().get("http.ssl"))
        bottle.response.set_cookie(COOKIE, bottle.request.query_string, path=PORTAL, httponly=True,
                                   samesite="lax", secure=secure, max_age=12 * 3600)
        bottle.response.status = 303
        bottle.response.set_header("Location", PORTAL + "/")
        return ""

    def series_of(infos: list[InstanceInfo]) -> list[list[InstanceInfo]]:
        groups: dict[str, list[InstanceInfo]] = {}
        for info in infos:
            groups.setdefault(info.series_uid, []).append(info)
        return list(groups.values())

    @app.get(PORTAL + "/")
    def study_page() -> str:
        check, page = from_cookie()
        if page is not None:
            return page
        assert check is not None and check.token is not None
        from appliance.burn import render
        from appliance.portal import zips

        infos = study_of(check)
        if not infos:
            return _page("portal_message", 404, title="Study not available",
                         message="The images of this study are no longer stored here. Please ask the department "
                                 "that gave you the link.", **header_values())
        first = infos[0]
        series = []
        for n, group in enumerate(series_of(infos)):
            frames = sum(i.frames for i in group)
            series.append({"number": group[0].series_number or n + 1, "modality": group[0].modality,
                           "description": group[0].series_description, "images": len(group), "frames": frames,
                           "previews": [f"{PORTAL}/series/{n}/preview/{k}.jpg"
                                        for k in range(len(render.representative(group)))]})
        default = settings().get("http.zip_content") or "dicom-jpeg-lossless"
        formats = sorted(zips.FORMATS, key=lambda f: f != default)
        valid_until = dt.datetime.fromtimestamp(check.token.expires_at).strftime("%Y-%m-%d")
        return _page("portal_study", patient_name=first.patient_name, study_date=dicom_date(first.study_date),
                     study_description=first.study_description, series=series, valid_until=valid_until,
                     downloads=[{"href": f"{PORTAL}/download/{f}", "label": FORMAT_LABELS[f], "default": f == default}
                                for f in formats], **header_values(first))

    @app.get(PORTAL + "/series/<n:int>/preview/<k:int>.jpg")
    def preview(n: int, k: int) -> Any:
        check, page = from_cookie()
        if page is not None:
            return page
        from PIL import Image

        from appliance.burn import render

        groups = series_of(study_of(check))  # type: ignore[arg-type]
        picks = render.representative(groups[n]) if 0 <= n < len(groups) else []
        if not 0 <= k < len(picks):
            return _page("portal_message", 404, title="No such picture", message="No such picture.",
                         **header_values())
        try:
            image = render.display_image(*picks[k])
        except Exception:  # a picture that cannot be shown: the page shows its alt text
            return _page("portal_message", 404, title="No picture", message="This picture cannot be shown.",
                         **header_values())
        image.thumbnail((render.MAX_SIDE, render.MAX_SIDE), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=85)
        bottle.response.content_type = "image/jpeg"
        return buf.getvalue()

    @app.route(PORTAL + "/download/<fmt>", method=["GET", "HEAD"])
    def download(fmt: str) -> Any:
        check, page = from_cookie()
        if page is not None:
            return page
        from appliance.portal import zips

        if fmt not in zips.FORMATS:
            return _page("portal_message", 404, title="No such download", message="No such download.",
                         **header_values())
        infos = study_of(check)  # type: ignore[arg-type]
        if not infos:
            return _page("portal_message", 404, title="Study not available",
                         message="The images of this study are no longer stored here.", **header_values())
        z = zips.build(fmt, infos, spool=data_dir / "spool")
        response = bottle.response
        response.content_type = "application/zip"
        response.set_header("Content-Disposition", f'attachment; filename="{z.filename}"')
        if z.size is None:  # streamed as made: no length, no ranges (a broken download starts again)
            if bottle.request.method == "HEAD":
                z.close()
                return ""
            record(check, f"download {fmt}")  # type: ignore[arg-type]
            return z
        response.set_header("Accept-Ranges", "bytes")
        response.set_header("ETag", z.etag)
        wanted = _range(bottle.request.headers.get("Range", ""), z.size)
        if_range = bottle.request.headers.get("If-Range")
        if wanted is not None and if_range and if_range != z.etag:
            wanted = None  # the study changed since the first part: send it whole
        if wanted == "unsatisfiable":
            z.close()
            response.status = 416
            response.set_header("Content-Range", f"bytes */{z.size}")
            return ""
        if bottle.request.method == "HEAD":
            z.close()
            response.content_length = z.size
            return ""
        if wanted is None:
            response.content_length = z.size
            record(check, f"download {fmt}")  # type: ignore[arg-type]
            return z
        start, end = wanted  # type: ignore[misc]
        response.status = 206
        response.set_header("Content-Range", f"bytes {start}-{end}/{z.size}")
        response.content_length = end - start + 1
        record(check, f"download {fmt} bytes {start}-{end}")  # type: ignore[arg-type]
        return _Ranged(z, start, end)

    @app.get(PORTAL + "/static/portal.css")
    def css() -> Any:
        return bottle.static_file("portal.css", root=str(STATIC), mimetype="text/css")

    return app


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _range(header: str, size: int) -> tuple[int, int] | str | None:
    """One byte range of `size` bytes: (start, end inclusive), "unsatisfiable", or None (send all:
    no header, several ranges, or a header we do not understand, as RFC 9110 allows)."""
    m = _RANGE.fullmatch(header.strip().replace(" ", ""))
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # the last n bytes
        n = int(m.group(2))
        return (max(0, size - n), size - 1) if n else "unsatisfiable"
    start = int(m.group(1))
    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    if start >= size:
        return "unsatisfiable"
    return None if end < start else (start, end)


class _Ranged:
    """Part of a zip as a WSGI body; closing it closes the zip."""

    def __init__(self, z: zips.StudyZip, start: int, end: int) -> None:
        from appliance.portal import zips

        self.z = z
        self.chunks = zips.byte_range(z, start, end)

    def __iter__(self) -> Any:
        return self.chunks

    def close(self) -> None:
        self.chunks.close()
        self.z.close()
