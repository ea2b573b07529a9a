"""The technician web UI: a bottle app rendered on the server (SimpleTemplate, autoescaped) plus one
small static script for live parts. Data comes only through the owner modules' functions.

Every page needs a session (server-side, state.db); with no user yet every page leads to /setup.
Every POST passes the CSRF token and Origin / Sec-Fetch-Site checks. Security headers are added by
a WSGI wrapper so that redirects and error pages carry them too.
"""

from __future__ import annotations

import csv
import hashlib
import io
import ipaddress
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import bottle
from bottle import HTTPResponse, abort, redirect, request, response

from appliance import accounts, audit, backup, db, diagnostics, index, network, retention, tlsca
from appliance.burn import jobs, robots, routing
from appliance.burn.text import person_name
from appliance.config import SPECS, SettingError, Settings, make_node
from appliance.hl7 import logfile as hl7_logfile
from appliance.portal import slip, tokens
from appliance.transfer import jobs as ttjobs
from appliance.transfer import report as transfer_report
from appliance.transfer import rules
from webui.auth import Throttle, same_origin, token_ok
from webui.portal import portal_app

HERE = Path(__file__).resolve().parent
# one list object for every render: bottle caches compiled templates by id() of the lookup list
TEMPLATE_LOOKUP = [str(HERE / "templates")]
STATIC = HERE / "static"
PAGE_SIZE = 50
IDLE_SECONDS = 30 * 60
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
]
# the settings pages: one per dialog of the guide (keys in SPECS order)
GROUPS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "dicom": ("DICOM server", lambda k: k.startswith("dicom.") or k in ("burn.delay_seconds", "burn.group_by")),
    "burning": ("Burning", lambda k: k.startswith("burn.") and k not in ("burn.delay_seconds", "burn.group_by")),
    "worklist": ("Worklist server", lambda k: k.startswith(("hl7.", "worklist."))),
    "http": ("HTTP server", lambda k: k.startswith("http.")),
    "station": ("Supervisor and front panel", lambda k: k.startswith(("supervisor.", "panel."))),
}


def _bool_key(key: str) -> bool:
    return isinstance(SPECS[key].default, bool)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _int_arg(name: str, default: int = 0, lo: int = 0, hi: int = 10**9) -> int:
    try:
        return max(lo, min(hi, int(request.query.get(name, default))))
    except ValueError:
        return default


class WebApp:
    """The bottle app with its per-thread database connections and the login throttle."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.settings = Settings(self.data_dir)
        self.throttle = Throttle()
        self._conns = db.PerThread(self.data_dir)  # closed when its request's thread ends
        self.static_names = {p.name for p in STATIC.iterdir() if p.is_file()}
        self.app = bottle.Bottle()
        self.app.config["autojson"] = True
        self._routes()
        self.app.merge(portal_app(self.data_dir))  # the patient portal: /token, /portal/... (no login)

    # -- plumbing

    def conn(self) -> Any:
        return self._conns.get()

    def wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            names = {h[0].lower() for h in headers}
            headers = headers + [h for h in SECURITY_HEADERS if h[0].lower() not in names]
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        if "HTTP_COOKIE" in environ:
            environ["HTTP_COOKIE"] = readable_cookies(environ["HTTP_COOKIE"])
        return self.app(environ, start)

    def https(self) -> bool:
        return request.urlparts.scheme == "https"

    def cookie_name(self) -> str:
        return "__Host-bsid" if self.https() else "bsid"

    def address(self) -> str:
        return str(request.environ.get("REMOTE_ADDR", ""))  # not X-Forwarded-For: a client could forge it

    def session(self) -> dict[str, Any] | None:
        cached = request.environ.get("bs.session", False)
        if cached is not False:
            return cached
        sid = request.get_cookie(self.cookie_name()) or ""
        sess = accounts.get_session(self.conn(), sid, IDLE_SECONDS) if sid else None
        request.environ["bs.session"] = sess
        return sess

    def start_session(self, username: str) -> dict[str, Any]:
        """A new session id (always new: at login the visitor's id is replaced)."""
        old = request.get_cookie(self.cookie_name())
        if old:
            accounts.end_session(self.conn(), old)
        sid, csrf = accounts.new_session(self.conn(), username, self.address(), IDLE_SECONDS)
        response.set_cookie(self.cookie_name(), sid, path="/", httponly=True, samesite="strict",
                            secure=self.https())
        sess = {"username": username, "csrf": csrf, "role": None}
        request.environ["bs.session"] = sess
        return sess

    def visitor(self) -> dict[str, Any]:
        """The session of whoever looks at /login or /setup (for the form's CSRF token)."""
        return self.session() or self.start_session("")

    def check_post(self, sess: dict[str, Any] | None) -> None:
        if not same_origin(request.urlparts.scheme, request.urlparts.netloc, request.headers.get("Origin"),
                           request.headers.get("Sec-Fetch-Site")):
            abort(403, "Refused: the request came from another site.")
        given = request.forms.get("csrf") or request.headers.get("X-CSRF-Token")
        if sess is None or not token_ok(sess["csrf"], given):
            abort(403, "Refused: the form has expired or was not sent by this station. Reload the page and try again.")

    def need(self, role: str = "viewer", post: bool = False) -> dict[str, Any]:
        """The logged-in user's session, or a redirect / 401 / 403; POSTs also pass the CSRF checks."""
        api = request.path.startswith("/api/")
        if accounts.user_count(self.conn()) == 0:
            if api:
                abort(401, "no user yet: open /setup")
            redirect("/setup")
        sess = self.session()
        if sess is None or not sess["username"]:
            if api:
                abort(401, "log in first")
            if request.method == "GET":
                redirect("/login?" + urlencode({"next": request.fullpath}))
            abort(403, "Your session has ended. Log in again.")
        if post:
            self.check_post(sess)
        if accounts.RANK[sess["role"]] < accounts.RANK[role]:
            abort(403, f"This needs the {role} role; you are {sess['role']}.")
        return sess

    def render(self, name: str, sess: dict[str, Any] | None = None, **kw: Any) -> str:
        values = self.settings.all()
        return bottle.template(name, template_lookup=TEMPLATE_LOOKUP, sess=sess, user=(sess or {}).get("username"),
                               role=(sess or {}).get("role"), csrf=(sess or {}).get("csrf", ""),
                               institution=values["http.institution"], department=values["http.department"],
                               aet=values["dicom.aet"], path=request.path, rank=accounts.RANK,
                               flash=request.query.getunicode("msg", ""), fdate=_fdate, fsize=_fsize, **kw)

    def back(self, where: str, message: str) -> HTTPResponse:
        redirect(where + ("&" if "?" in where else "?") + urlencode({"msg": message[:300]}))

    def log(self, sess: dict[str, Any] | None, action: str, target: str = "", detail: str = "") -> None:
        audit.record(self.conn(), (sess or {}).get("username") or "-", action, target, detail, self.address())

    # -- routes

    def _routes(self) -> None:  # noqa: C901 - one place lists every route
        app = self.app
        app.route("/static/<name>", callback=self.static)
        app.route("/setup", ["GET", "POST"], self.setup)
        app.route("/login", ["GET", "POST"], self.login)
        app.route("/logout", "POST", self.logout)
        app.route("/", callback=lambda: redirect("/jobs"))
        app.route("/studies", callback=self.studies)
        app.route("/studies/<uid>", callback=self.study)
        app.route("/studies/<uid>/burn", "POST", self.burn)
        app.route("/studies/<uid>/delete", "POST", self.delete_study)
        app.route("/jobs", callback=self.jobs_page)
        app.route("/jobs/<job_id>/<action:re:cancel|retry>", "POST", self.job_action)
        app.route("/jobs/<job_id>", callback=self.job_page)
        app.route("/jobs/<job_id>/label/<n:int>", callback=self.job_label)
        app.route("/studies/<uid>/series/<series_uid>/preview", callback=self.series_preview)
        app.route("/associations/<assoc_id:int>/burn", "POST", self.burn_held)
        app.route("/studies/<uid>/token", "POST", self.create_token)
        app.route("/tokens", callback=self.tokens_page)
        app.route("/tokens/<token_id:int>/revoke", "POST", self.revoke_token)
        app.route("/robots", ["GET", "POST"], self.robots_page)
        app.route("/robots/<name>/delete", "POST", self.robot_delete)
        app.route("/settings/<group>", ["GET", "POST"], self.settings_page)
        app.route("/nodes", ["GET", "POST"], self.nodes_page)
        app.route("/nodes/<aet>/delete", "POST", self.node_delete)
        app.route("/nodes/<aet>/echo", "POST", self.node_echo)
        app.route("/users", ["GET", "POST"], self.users_page)
        app.route("/users/<name>/delete", "POST", self.user_delete)
        app.route("/diagnostics", callback=self.diagnostics_page)
        app.route("/diagnostics/reset/<name>", "POST", self.reset_process)
        app.route("/logs/audit", callback=self.audit_page)
        app.route("/logs/associations", callback=self.assoc_page)
        app.route("/logs/hl7", callback=self.hl7_log_page)
        app.route("/logs/<name:re:audit|associations>.csv", callback=self.log_csv)
        app.route("/logs/files/<name>", callback=self.log_file)
        app.route("/tls/ca.pem", callback=self.ca_pem)
        app.route("/tls/upload", "POST", self.tls_upload)
        app.route("/tls/remove", "POST", self.tls_remove)
        app.route("/api/jobs", callback=self.api_jobs)
        app.route("/api/robots", callback=self.api_robots)
        app.route("/api/status", callback=self.api_status)
        app.route("/query", callback=self.query_page)
        app.route("/query/retrieve", "POST", self.retrieve)
        app.route("/studies/<uid>/send", "POST", self.send_study)
        app.route("/transfers", callback=self.transfers_page)
        app.route("/transfers/<transfer_id>/<action:re:cancel|retry>", "POST", self.transfer_action)
        app.route("/api/transfers", callback=self.api_transfers)
        app.route("/forwarding", ["GET", "POST"], self.forwarding_page)
        app.route("/forwarding/<name>/delete", "POST", self.forward_delete)
        app.route("/storage", ["GET", "POST"], self.storage_page)
        app.route("/storage/purge", "POST", self.storage_purge)
        app.route("/network", ["GET", "POST"], self.network_page)
        app.route("/network/confirm", "POST", self.network_confirm)
        app.route("/backup", callback=self.backup_page)
        app.route("/backup/export", "POST", self.backup_export)
        app.route("/backup/import", "POST", self.backup_import)
        for code in (400, 401, 403, 404, 405, 429, 500):
            app.error(code)(self.error_page)

    def error_page(self, err: bottle.HTTPError) -> str:
        if request.path.startswith("/api/"):
            response.content_type = "application/json"
            return json.dumps({"error": str(err.body or err.status_line)})
        message = err.body if isinstance(err.body, str) and err.status_code != 500 else err.status_line
        try:
            return self.render("error", self.session(), code=err.status_code, message=message)
        except Exception:
            return bottle.html_escape(err.status_line)

    def static(self, name: str) -> Any:
        if name not in self.static_names:  # a fixed list: no path (../, %2f) can reach anything else
            abort(404, "Not found.")
        resp = bottle.static_file(name, root=str(STATIC))
        resp.set_header("Cache-Control", "no-cache")
        return resp

    # -- setup and login

    def setup(self) -> str:
        conn = self.conn()
        if accounts.user_count(conn):
            abort(404, "Setup is done: log in instead.")
        sess = self.visitor()
        error = ""
        if request.method == "POST":
            self.check_post(sess)
            keys = (f"addr:{self.address()}", "setup")
            if self.throttle.wait_seconds(*keys) > 0:
                abort(429, "Too many wrong setup codes; wait a minute and try again.")
            name = request.forms.getunicode("username", "").strip()
            password = request.forms.getunicode("password", "")
            if password != request.forms.getunicode("password2", ""):
                error = "The two passwords differ."
            else:
                try:
                    accounts.use_setup_code(self.data_dir, conn, request.forms.getunicode("code", ""), name, password)
                except accounts.AccountError as exc:
                    error = str(exc)
                    if "setup code" in error:
                        self.throttle.failed(*keys)
                        audit.record(conn, name or "-", "setup-failed", "", "wrong setup code", self.address())
                else:
                    audit.record(conn, name, "setup", name, "first admin created with the setup code", self.address())
                    self.start_session(name)
                    redirect("/jobs")
        return self.render("setup", sess, error=error, username=request.forms.getunicode("username", ""))

    def login(self) -> str:
        conn = self.conn()
        if accounts.user_count(conn) == 0:
            redirect("/setup")
        sess = self.visitor()
        target = request.query.get("next", "/jobs")
        if not target.startswith("/") or target[1:2] in ("/", "\\"):  # a path of this site, never another host
            target = "/jobs"
        error = ""
        name = request.forms.getunicode("username", "").strip() if request.method == "POST" else ""
        if request.method == "POST":
            self.check_post(sess)
            keys = (f"user:{name.lower()}", f"addr:{self.address()}")
            wait = self.throttle.wait_seconds(*keys)
            if wait > 0:
                audit.record(conn, name or "-", "login-throttled", "", f"{wait:.0f} s left", self.address())
                abort(429, f"Too many failed logins; try again in {int(wait) + 1} seconds.")
            user = accounts.authenticate(conn, name, request.forms.getunicode("password", ""))
            if user is None:
                self.throttle.failed(*keys)
                audit.record(conn, name or "-", "login-failed", "", "", self.address())
                error = "Wrong user name or password."
            else:
                self.throttle.succeeded(*keys)
                audit.record(conn, user["name"], "login", "", "", self.address())
                self.start_session(user["name"])
                redirect(target)
        return self.render("login", sess if sess and sess["username"] else None, error=error, username=name,
                           csrf_login=sess["csrf"], next=target)

    def logout(self) -> None:
        sess = self.session()
        self.check_post(sess)
        sid = request.get_cookie(self.cookie_name())
        if sid:
            accounts.end_session(self.conn(), sid)
        if sess and sess["username"]:
            self.log(sess, "logout")
        response.delete_cookie(self.cookie_name(), path="/", secure=self.https(), httponly=True, samesite="strict")
        redirect("/login")

    # -- studies

    def studies(self) -> str:
        sess = self.need()
        q = {k: request.query.getunicode(k, "").strip() for k in ("name", "pid", "from", "to", "modality", "accession")}
        page = _int_arg("page", 1, 1)
        dates = {k: q[k].replace("-", "") for k in ("from", "to")}
        rows, total = index.search_studies(
            self.conn(), name=q["name"], patient_id=q["pid"], date_from=dates["from"], date_to=dates["to"],
            modality=q["modality"].upper(), accession=q["accession"], offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
        arrivals = index.recent_studies(self.conn(), time.time() - 6 * 3600, limit=10) if page == 1 else []
        return self.render("studies", sess, rows=rows, total=total, page=page, q=q, pages=_pages(total),
                           query=lambda p: urlencode({**q, "page": p}), arrivals=arrivals)

    def study(self, uid: str) -> str:
        sess = self.need()
        study = index.get_study(self.conn(), uid)
        if study is None:
            abort(404, "No such study in the index.")
        return self.render("study", sess, study=study, robots=robots.list_robots(self.settings),
                           copies=self.settings.get("burn.default_copies"),
                           store_nodes=[n for n in self.settings.nodes() if n.allows("store")],
                           token_days=self.settings.get("http.token_days"))

    def burn(self, uid: str) -> None:
        sess = self.need("technician", post=True)
        role = request.forms.get("role", "any")
        try:
            copies = int(request.forms.get("copies", "1"))
            priority = int(request.forms.get("priority", "0"))
            if role not in robots.ROLES:
                raise jobs.JobError(f"robot role: one of {', '.join(robots.ROLES)}")
            job_id = routing.burn_study(self.conn(), self.settings, uid, role=role, copies=copies, priority=priority)
        except (ValueError, jobs.JobError) as exc:
            self.back(f"/studies/{uid}", f"Not burned: {exc}")
        self.log(sess, "burn", uid, f"job {job_id}, role {role}, {copies} copies, priority {priority}")
        self.back("/jobs", f"Job {job_id} queued.")

    # -- patient links (the portal itself is webui/portal.py)

    def create_token(self, uid: str) -> str:
        """A new patient link for a study; answers with its printable slip (the only time it is shown)."""
        sess = self.need("technician", post=True)
        values = self.settings.all()
        try:
            days = int(request.forms.get("days") or values["http.token_days"])
            token, row = tokens.create(self.conn(), uid, days, origin=f"web {sess['username']}")
        except (ValueError, tokens.TokenError) as exc:
            self.back(f"/studies/{uid}", f"No link made: {exc}")
        self.log(sess, "token-create", uid, f"link {row.id}, {days} days")
        study = index.get_study(self.conn(), uid) or {}
        return slip.slip_html(tokens.link(values, token), patient_name=person_name(study.get("patient_name") or ""),
                              study_date=_fdate(study.get("study_date") or ""),
                              study_description=str(study.get("description") or ""), expires_at=row.expires_at,
                              institution=values["http.institution"], department=values["http.department"],
                              stylesheet="/static/slip.css")

    def tokens_page(self) -> str:
        sess = self.need("technician")
        return self.render("tokens", sess, tokens=list(reversed(tokens.list_tokens(self.conn()))))

    def revoke_token(self, token_id: int) -> None:
        sess = self.need("technician", post=True)
        try:
            row = tokens.revoke(self.conn(), token_id)
        except tokens.TokenError as exc:
            self.back("/tokens", str(exc))
        self.log(sess, "token-revoke", row.study_uid, f"link {token_id}")
        self.back("/tokens", f"Link {token_id} revoked: it opens nothing from now on.")

    def delete_study(self, uid: str) -> None:
        """Delete a study's files and index rows (admin), unless a job or a delayed group still needs it."""
        sess = self.need("admin", post=True)
        conn = self.conn()
        study = index.get_study(conn, uid)
        if study is None:
            abort(404, "No such study in the index.")
        busy = jobs.active_jobs_with_study(conn, uid)
        groups = routing.pending_groups_with_study(conn, uid)
        if busy or groups:
            why = f"job {', '.join(busy)}" if busy else f"delayed group {', '.join(map(str, groups))}"
            self.back(f"/studies/{uid}", f"Not deleted: {why} still burns it; cancel that first.")
        paths = index.delete_study(conn, uid)
        missing = 0
        for path in paths:
            try:
                Path(path).unlink()
            except FileNotFoundError:
                missing += 1
        self.log(sess, "delete", uid, f"study of {study['patient_name']} ({study['id_value']}), {len(paths)} files"
                 + (f", {missing} already gone" if missing else ""))
        self.back("/studies", f"Study deleted ({len(paths)} files).")

    # -- jobs

    def jobs_page(self) -> str:
        sess = self.need()
        conn = self.conn()
        return self.render("jobs", sess, jobs=[_job_view(j) for j in jobs.list_jobs(conn, limit=200)],
                           groups=routing.pending_groups(conn), held=routing.held_associations(conn),
                           now=time.time())

    def burn_held(self, assoc_id: int) -> None:
        """"Burn anyway" for an association the router held back (e.g. aborted before its end)."""
        sess = self.need("technician", post=True)
        try:
            job_id = routing.burn_association(self.conn(), self.settings, int(assoc_id))
        except jobs.JobError as exc:
            self.back("/jobs", f"Not burned: {exc}")
        self.log(sess, "burn", f"association {assoc_id}", f"job {job_id} (burn anyway)")
        self.back("/jobs", f"Job {job_id} queued.")

    def job_page(self, job_id: str) -> str:
        """One job: its discs (label preview, media, size) and what is on them."""
        sess = self.need()
        job = jobs.get_job(self.conn(), job_id)
        if job is None:
            abort(404, "No such job.")
        contents: dict[tuple[str, str], dict[str, Any]] = {}
        for item in jobs.job_instances(self.conn(), job_id):
            entry = contents.setdefault((item["study_uid"], item["series_uid"]), {
                "study_uid": item["study_uid"], "series_uid": item["series_uid"], "instances": 0, "size": 0})
            entry["instances"] += 1
            entry["size"] += item["size"]
        studies = {uid: index.get_study(self.conn(), uid) for uid in {k[0] for k in contents}}
        series = {s["series_uid"]: s for st in studies.values() if st for s in st["series"]}
        return self.render("job", sess, job=_job_view(job), raw=job, contents=list(contents.values()),
                           studies=studies, series=series, group=routing.group_of_job(self.conn(), job_id))

    def job_label(self, job_id: str, n: int) -> Any:
        """The label image the builder rendered for disc n (while the disc images are kept)."""
        self.need()
        job = jobs.get_job(self.conn(), job_id)
        discs = (job or {}).get("discs") or []
        if not 1 <= n <= len(discs) or not discs[n - 1].get("label_image"):
            abort(404, "No label image.")
        path = Path(discs[n - 1]["label_image"]).resolve()
        if not path.is_relative_to(self.data_dir.resolve()) or not path.is_file():
            abort(404, "No label image (removed with the disc images).")
        return bottle.static_file(path.name, root=str(path.parent))

    def series_preview(self, uid: str, series_uid: str) -> Any:
        """A JPEG of the series' middle image, rendered once and cached in <data>/cache/previews/."""
        self.need()
        from appliance.burn import catalog, render

        cache = self.data_dir / "cache" / "previews"
        out = cache / (hashlib.sha256(series_uid.encode()).hexdigest()[:32] + ".jpg")
        if not out.exists():
            rows = [r for r in index.series_instances(self.conn(), series_uid) if r["study_uid"] == uid]
            if not rows:
                abort(404, "No such series.")
            try:
                infos = catalog.catalog([rows[len(rows) // 2]])
            except Exception:
                abort(404, "No preview (the file cannot be read).")
            picks = render.representative(infos, 1)
            cache.mkdir(parents=True, exist_ok=True)
            if not picks or not render.render_one(picks[0][0], picks[0][1], out):
                abort(404, "No preview for this series (no pixels or an unknown codec).")
        resp = bottle.static_file(out.name, root=str(cache), mimetype="image/jpeg")
        resp.set_header("Cache-Control", "private, max-age=3600")
        return resp

    def job_action(self, job_id: str, action: str) -> None:
        sess = self.need("technician", post=True)
        try:
            text = (jobs.cancel_job if action == "cancel" else jobs.retry_job)(self.conn(), job_id)
        except jobs.JobError as exc:
            if request.headers.get("X-CSRF-Token"):
                raise HTTPResponse(json.dumps({"error": str(exc)}), 409, content_type="application/json") from None
            self.back("/jobs", str(exc))
        self.log(sess, action, job_id, text)
        if request.headers.get("X-CSRF-Token"):  # from the page's script
            raise HTTPResponse(json.dumps({"ok": text}), 200, content_type="application/json")
        self.back("/jobs", text)

    def api_jobs(self) -> dict[str, Any]:
        self.need()
        return {"jobs": [_job_view(j) for j in jobs.list_jobs(self.conn(), limit=200)]}

    # -- robots

    def robots_page(self) -> str:
        error = ""
        if request.method == "POST":
            sess = self.need("admin", post=True)
            form = {k: request.forms.getunicode(k, "").strip() for k in ("name", "driver", "role", "media", "spool",
                                                                         "engine_path", "mode")}
            old = robots.get_robot(self.settings, form["name"])
            # an edit keeps what the form does not show (driver options, where the robot came from)
            doc = {**(old or {"source": "manual"}), **form, "verify": request.forms.get("verify") == "true"}
            try:
                robot = robots.add_robot(self.settings, doc)
            except SettingError as exc:
                error = str(exc)
            else:
                self.log(sess, "robot-edit" if old else "robot-add", robot["name"],
                         f"{json.dumps(old)} -> {json.dumps(robot)}" if old else json.dumps(robot))
                self.back("/robots", f"Robot {robot['name']} saved.")
        else:
            sess = self.need()
        fields = ("name", "driver", "role", "media", "spool", "engine_path", "mode", "verify")
        if request.method == "POST":
            form = {k: request.forms.getunicode(k, "") for k in fields}
        else:
            doc = robots.get_robot(self.settings, request.query.getunicode("edit", "")) or {}
            form = {k: ",".join(v) if isinstance(v, list) else _as_text(v) for k, v in doc.items() if k in fields}
        return self.render("robots", sess, robots=self._robot_views(), error=error, form=form)

    def _robot_views(self) -> list[dict[str, Any]]:
        status = robots.status_rows(self.conn())
        out = []
        for robot in robots.list_robots(self.settings):
            row = status.get(robot["name"]) or {}
            body = row.get("status") or {}
            current = [j for j in jobs.list_jobs(self.conn(), jobs.IN_ROBOT, limit=20) if j["robot"] == robot["name"]]
            out.append({"name": robot["name"], "driver": robot["driver"], "role": robot["role"],
                        "media": robot.get("media", []), "spool": robot.get("spool", ""),
                        "source": robot.get("source", "manual"), "online": robots.is_online(row or None),
                        "message": row.get("message", "no status yet"), "heartbeat_at": row.get("heartbeat_at"),
                        "stackers": {k: _stacker_text(v) for k, v in (body.get("stackers") or {}).items()},
                        "ink": body.get("ink") or {},
                        "drives": body.get("drives") or [], "faults": body.get("faults") or [],
                        "loaded": body.get("media") or [], "jobs": [j["id"] for j in current]})
        return out

    def robot_delete(self, name: str) -> None:
        sess = self.need("admin", post=True)
        if not robots.delete_robot(self.settings, name):
            abort(404, "No such robot.")
        self.log(sess, "robot-delete", name)
        self.back("/robots", f"Robot {name} deleted.")

    def api_robots(self) -> dict[str, Any]:
        self.need()
        return {"robots": self._robot_views()}

    # -- query / retrieve / send / transfers / forwarding (the transfer process does the DICOM work)

    def query_page(self) -> str:
        """C-FIND on a known node, handed to the transfer process exactly as `burnstation query` does."""
        # pynetdicom and pydicom: imported here, not at the web process's start
        from appliance.transfer import commands, engine

        sess = self.need("technician")
        q = {k: request.query.getunicode(k, "").strip()
             for k in ("node", "level", "name", "pid", "from", "to", "modality", "accession", "study")}
        q["level"] = q["level"] if q["level"] in QUERY_LEVELS else "study"
        results: list[dict[str, Any]] | None = None
        error = ""
        if q["node"]:
            try:
                node = self.settings.node(q["node"])
                if node is None:
                    raise SettingError(f"{q['node']!r} is not a known node (add it on the Known nodes page)")
                keys = _query_keys(q)
                engine.build_identifier(q["level"], keys)  # a bad key refused here, with the reason
                answer = commands.ask(self.settings, "query", node.aet, {"level": q["level"].upper(), "keys": keys})
            except (SettingError, engine.QueryError) as exc:
                error = str(exc)
            else:
                if answer["state"] == "failed":
                    error = f"Query on {node.aet} failed: {answer['error']}"
                else:
                    results = answer["result"] or []
                self.log(sess, "query", node.aet, f"{q['level']} {json.dumps(keys)}: "
                         + (error or f"{len(results or [])} result(s)"))
        return self.render("query", sess, q=q, results=results, error=error, levels=QUERY_LEVELS,
                           nodes=[n for n in self.settings.nodes() if n.allows("find")])

    def retrieve(self) -> None:
        sess = self.need("technician", post=True)
        f = request.forms
        burn = f.get("burn") == "1"
        try:
            node = self.settings.node(f.getunicode("node", ""))
            if node is None:
                raise SettingError(f"{f.getunicode('node', '')!r} is not a known node")
            study = f.getunicode("study", "").strip()
            if not study:
                raise SettingError("retrieve: no Study Instance UID in the result")
            tid = ttjobs.create_retrieve(self.conn(), node.aet, node.retrieve, study, f.getunicode("series", "").strip(),
                                         burn=burn)
        except (SettingError, ttjobs.TransferError) as exc:
            self.back("/transfers", f"Not retrieved: {exc}")
        self.log(sess, "retrieve", study, f"transfer {tid} from {node.aet} by C-{node.retrieve.upper()}"
                 + (", then burn" if burn else ""))
        self.back("/transfers", f"Transfer {tid} queued: retrieve from {node.aet}"
                  + (", then a burn job" if burn else "") + ".")

    def send_study(self, uid: str) -> None:
        sess = self.need("technician", post=True)
        aet = request.forms.getunicode("node", "")
        try:
            node = self.settings.node(aet)
            if node is None:
                raise SettingError(f"{aet!r} is not a known node")
            if not node.allows("store"):
                raise SettingError(f"{node.aet} is not allowed the store service")
            uids = ttjobs.select_instances(self.conn(), uid)
            tid = ttjobs.create_send(self.conn(), node.aet, uids, study_uid=uid)
        except (SettingError, ttjobs.TransferError) as exc:
            self.back(f"/studies/{uid}", f"Not sent: {exc}")
        self.log(sess, "send", uid, f"transfer {tid} to {node.aet}, {len(uids)} instances")
        self.back("/transfers", f"Transfer {tid} queued: {len(uids)} instances to {node.aet}.")

    def _transfer_views(self) -> list[dict[str, Any]]:
        return [_transfer_view(t) for t in ttjobs.list_transfers(self.conn(), limit=200)]

    def transfers_page(self) -> str:
        sess = self.need("technician")
        return self.render("transfers", sess, transfers=self._transfer_views(),
                           counts=ttjobs.count_active(self.conn()))

    def api_transfers(self) -> dict[str, Any]:
        self.need("technician")
        return {"transfers": self._transfer_views(), "counts": ttjobs.count_active(self.conn())}

    def transfer_action(self, transfer_id: str, action: str) -> None:
        sess = self.need("technician", post=True)
        try:
            text = (ttjobs.cancel if action == "cancel" else ttjobs.retry)(self.conn(), transfer_id)
        except ttjobs.TransferError as exc:
            self.back("/transfers", str(exc))
        self.log(sess, f"transfer-{action}", transfer_id, text)
        self.back("/transfers", text)

    def forwarding_page(self) -> str:
        """Forwarding rules with their backlog; adding and deleting is for admins."""
        error = ""
        if request.method == "POST":
            sess = self.need("admin", post=True)
            f = request.forms
            try:
                rule = rules.make_rule(self.settings, node=f.getunicode("node", ""), name=f.getunicode("name", "") or None,
                                       called=f.getunicode("called", ""), calling=f.getunicode("calling", ""),
                                       modalities=f.getunicode("modalities", ""),
                                       delay=f.getunicode("delay", "") or rules.DEFAULT_DELAY)
                ttjobs.start_cursor(self.conn(), rule.name)  # from now on, as `burnstation forward add`
                rules.add_rule(self.settings, rule)
            except SettingError as exc:
                error = str(exc)
            else:
                self.log(sess, "forward-add", rule.name, rule.describe())
                self.back("/forwarding", f"Rule {rule.name} added: {rule.describe()}.")
        else:
            sess = self.need("technician")
        shown = [{"rule": r, **ttjobs.rule_backlog(self.conn(), r.name)} for r in rules.list_rules(self.settings)]
        return self.render("forwarding", sess, rules=shown, error=error, form=request.forms,
                           nodes=[n for n in self.settings.nodes() if n.allows("store")],
                           default_delay=rules.DEFAULT_DELAY)

    def forward_delete(self, name: str) -> None:
        sess = self.need("admin", post=True)
        if not rules.delete_rule(self.settings, name):
            abort(404, "No such forwarding rule.")
        ttjobs.forget_rule(self.conn(), name)
        self.log(sess, "forward-delete", name)
        self.back("/forwarding", f"Rule {name} deleted.")

    # -- storage retention, network and time, configuration backup (the ops modules do the work)

    def storage_page(self) -> str:
        """Disk usage, the retention settings (checked as `config set`), what goes next and when."""
        sess, shown, error = self.settings_form(STORAGE_KEYS, "/storage", reader="technician")
        report = retention.status(self.conn(), self.settings, self.data_dir)
        preview = None
        days_text = request.query.getunicode("older_than_days", "").strip()
        if request.query.get("preview"):
            try:
                days = _days(days_text)
                preview = retention.plan(self.conn(), self.settings, self.data_dir, older_than_days=days).delete
            except SettingError as exc:
                error = str(exc)
        fields = [{"key": k, "value": shown[k], "help": SPECS[k].help[:1].upper() + SPECS[k].help[1:]}
                  for k in STORAGE_KEYS]
        return self.render("storage", sess, report=report, fields=fields, error=error, preview=preview,
                           days=days_text, ftime=_ftime)

    def storage_purge(self) -> None:
        sess = self.need("admin", post=True)
        text = request.forms.getunicode("older_than_days", "").strip()
        try:
            days = _days(text)
        except SettingError as exc:
            self.back("/storage", f"Not purged: {exc}")
        the_plan = retention.plan(self.conn(), self.settings, self.data_dir, older_than_days=days)
        done = retention.purge(self.conn(), self.settings, self.data_dir, the_plan, older_than_days=days)
        freed = sum(int(d.get("bytes_freed") or 0) for d in done)
        self.log(sess, "storage-purge", f"older than {days} days" if days is not None else "retention rules",
                 f"{len(done)} studies deleted, {freed} bytes: "
                 + ", ".join(f"{d['study_uid']} ({d['reason']})" for d in done)[:2000])
        self.back("/storage", f"Purged: {len(done)} stud{'y' if len(done) == 1 else 'ies'} deleted "
                  f"({_fsize(freed)}).")

    def network_page(self) -> str:
        """Host name, address, DNS, NTP and time zone, checked and applied as `burnstation network set`."""
        sess = self.need("admin", post=request.method == "POST")
        net = network.Network(self.data_dir)
        error = ""
        shown = {k: (" ".join(v) if isinstance(v, list) else str(v)) for k, v in net.show()["values"].items()}
        if request.method == "POST":
            given = {k: request.forms.getunicode(k) for k in network.DEFAULTS
                     if request.forms.getunicode(k) is not None}
            changes = {k: v for k, v in given.items() if v.strip() != shown[k]}
            try:
                result = net.set(changes) if changes else None
            except SettingError as exc:
                error = str(exc)
                shown.update(given)
                self.log(sess, "network-refused", "", f"{json.dumps(changes)}: {exc}")
            else:
                if result is None:
                    self.back("/network", "Nothing changed.")
                self.log(sess, "network-set", result["values"]["hostname"], json.dumps(changes))
                message = ("Saved and applied." if result["applied"]
                           else f"Saved to {result['files']} (not applied: outside the appliance image).")
                if result["rollback_at"]:
                    message += (f" Address change: confirm within {network.ROLLBACK_SECONDS} s from the new address, "
                                "else the previous settings come back.")
                if result["failed"]:
                    message += " Could not apply: " + "; ".join(result["failed"])
                self.back("/network", message)
        state = net.show()
        new = (net.pending() or {}).get("new") or {}
        parts = request.urlparts
        confirm_at = (f"{parts.scheme}://{ipaddress.ip_interface(new['address']).ip}"
                      f"{':' + str(parts.port) if parts.port else ''}/network"
                      if new.get("mode") == "static" and new.get("address") else "")
        return self.render("network", sess, confirm_at=confirm_at, shown=shown, error=error, pending=state["pending_seconds"],
                           deadline=int(time.time() + state["pending_seconds"]) if state["pending_seconds"] is not None else 0,
                           applied=state["applied"], files=state["files"], keys=list(network.DEFAULTS),
                           apply_status=network.apply_summary(state["apply_status"]) if state["applied"] else "")

    def network_confirm(self) -> None:
        sess = self.need("admin", post=True)
        net = network.Network(self.data_dir)
        refusal = network.confirm_refusal(request.urlparts.hostname, net.pending())
        if refusal:
            self.back("/network", f"Not confirmed: {refusal}.")
        if not net.confirm():
            self.back("/network", "No network change waiting for confirmation (or it was already rolled back).")
        self.log(sess, "network-confirm")
        self.back("/network", "Network change confirmed: it stays.")

    def backup_page(self) -> str:
        sess = self.need("admin")
        return self.render("backup", sess, error=request.query.getunicode("error", ""))

    def backup_export(self) -> Any:
        """The configuration file (no patient data, device keys or tokens) as a download."""
        sess = self.need("admin", post=True)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "config.json"
            doc = backup.export_config(self.settings, path)
            body = path.read_bytes()
        self.log(sess, "config-export", "", ", ".join(doc["sections"]))
        name = f"burnstation-{self.settings.aet()}-{time.strftime('%Y%m%d-%H%M')}.json"
        return HTTPResponse(body, status=200, headers={"Content-Type": "application/json",
                                                       "Content-Disposition": f'attachment; filename="{name}"'})

    def backup_import(self) -> None:
        """Replace the configuration with an uploaded file, validated whole first (the reason shown when refused)."""
        sess = self.need("admin", post=True)
        upload = request.files.get("file")
        if upload is None:
            redirect("/backup?" + urlencode({"error": "choose a configuration file first"}))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "uploaded.json"
            path.write_bytes(upload.file.read(5_000_000))
            try:
                counts = backup.import_config(self.settings, path)
            except SettingError as exc:
                reason = str(exc).replace(str(path), upload.raw_filename or "the file")
                self.log(sess, "config-import-refused", upload.raw_filename or "", reason)
                redirect("/backup?" + urlencode({"error": f"Import refused, nothing changed: {reason}"}))
        self.log(sess, "config-import", upload.raw_filename or "", json.dumps(counts))
        self.back("/backup", "Imported " + ", ".join(f"{k} ({n})" if k in ("nodes", "robots") else k
                                                     for k, n in counts.items()) + ".")

    # -- settings

    def settings_form(self, keys: Sequence[str], back: str,
                      reader: str = "viewer") -> tuple[dict[str, Any], dict[str, str], str]:
        """Show or save settings `keys` (admin; same checks and messages as `config set`, audited).
        Returns (session, the values to show, the refusal message); a good save redirects to `back`."""
        values = self.settings.all()
        shown = {k: _as_text(values[k]) for k in keys}
        if request.method != "POST":
            return self.need(reader), shown, ""
        sess = self.need("admin", post=True)
        given = {k: request.forms.getunicode(k) for k in keys if request.forms.getunicode(k) is not None}
        changes = {k: v for k, v in given.items() if v != _as_text(values[k])}
        try:
            converted = self.settings.update(changes) if changes else {}
        except SettingError as exc:
            shown.update(given)
            return sess, shown, str(exc)
        audit.record_settings(self.conn(), sess["username"], values, converted, self.address())
        self.back(back, f"Saved ({len(converted)} changed)." if converted else "Nothing changed.")  # raises
        return sess, shown, ""

    def settings_page(self, group: str) -> str:
        if group not in GROUPS:
            abort(404, "No such settings page.")
        title, member = GROUPS[group]
        keys = [k for k in SPECS if member(k)]
        sess, shown, error = self.settings_form(keys, f"/settings/{group}")
        fields = [{"key": k, "value": shown[k], "help": SPECS[k].help[:1].upper() + SPECS[k].help[1:],
                   "bool": _bool_key(k), "choices": getattr(SPECS[k].check, "choices", None)} for k in keys]
        addresses = []
        if group == "dicom":
            from appliance.panel.screen import ip_addresses

            addresses = ip_addresses()
        cert = tlsca.web_certificate_summary(self.data_dir) if group == "http" else None
        return self.render("settings", sess, group=group, title=title, fields=fields, error=error,
                           groups=[(g, t) for g, (t, _) in GROUPS.items()], addresses=addresses, cert=cert,
                           cert_error=request.query.getunicode("cert_error", ""))

    # -- known nodes

    def nodes_page(self) -> str:
        error = ""
        if request.method == "POST":
            sess = self.need("technician", post=True)
            f = request.forms
            try:
                node = make_node(f.getunicode("aet", ""), f.getunicode("host", ""), f.getunicode("port", ""),
                                 f.get("tls") == "true", f.getall("services") or [], f.getunicode("description", ""),
                                 f.getunicode("retrieve", "") or "move")
                if not node.services:
                    raise SettingError("node services: choose at least one")
                original = f.getunicode("original", "").strip()
                old = self.settings.node(original or node.aet)
                if original and original != node.aet:
                    self.settings.delete_node(original)
                self.settings.add_node(node)
            except SettingError as exc:
                error = str(exc)
            else:
                self.log(sess, "node-edit" if old else "node-add", node.aet,
                         f"{json.dumps(old.to_doc()) if old else ''} -> {json.dumps(node.to_doc())}")
                self.back("/nodes", f"Node {node.aet} saved.")
        else:
            sess = self.need()
        edit = self.settings.node(request.query.getunicode("edit", "")) if request.query.get("edit") else None
        return self.render("nodes", sess, nodes=self.settings.nodes(), error=error, edit=edit, form=request.forms,
                           services=("echo", "store", "find", "move", "get"),
                           echo=json.loads(request.query.getunicode("echo", "") or "null"))

    def node_delete(self, aet: str) -> None:
        sess = self.need("technician", post=True)
        if not self.settings.delete_node(aet):
            abort(404, "No such node.")
        self.log(sess, "node-delete", aet)
        self.back("/nodes", f"Node {aet} deleted.")

    def node_echo(self, aet: str) -> None:
        sess = self.need("technician", post=True)
        from appliance.dicom import scu

        node = self.settings.node(aet)
        if node is None:
            abort(404, "No such node.")
        started = time.monotonic()
        try:
            ok, message = scu.echo(self.data_dir, self.settings, node)
        except Exception as exc:
            ok, message = False, str(exc)
        took = time.monotonic() - started
        self.log(sess, "echo", aet, f"{'success' if ok else 'failure'}: {message}")
        redirect("/nodes?" + urlencode({"echo": json.dumps({"aet": aet, "ok": ok, "message": message[:500],
                                                            "at": time.strftime("%H:%M:%S"), "ms": int(took * 1000)})}))

    # -- users

    def users_page(self) -> str:
        sess = self.need("admin", post=request.method == "POST")
        error = ""
        if request.method == "POST":
            f = request.forms
            name = f.getunicode("username", "").strip()
            try:
                if f.get("action") != "role" and f.getunicode("password", "") != f.getunicode("password2", ""):
                    raise accounts.AccountError("the two passwords differ")
                if f.get("action") == "role":
                    old = (accounts.get_user(self.conn(), name) or {}).get("role")
                    accounts.set_role(self.conn(), name, f.get("role", ""))
                    self.log(sess, "user-role", name, f"{old} -> {f.get('role')}")
                elif f.get("action") == "passwd":
                    accounts.set_password(self.conn(), name, f.getunicode("password", ""))
                    self.log(sess, "user-passwd", name)
                else:
                    accounts.add_user(self.conn(), name, f.get("role", ""), f.getunicode("password", ""))
                    self.log(sess, "user-add", name, f"role {f.get('role')}")
            except accounts.AccountError as exc:
                error = str(exc)
            else:
                self.back("/users", f"User {name} saved.")
        return self.render("users", sess, users=accounts.list_users(self.conn()), error=error,
                           roles=accounts.ROLES)

    def user_delete(self, name: str) -> None:
        sess = self.need("admin", post=True)
        try:
            accounts.delete_user(self.conn(), name)
        except accounts.AccountError as exc:
            self.back("/users", str(exc))
        self.log(sess, "user-delete", name)
        self.back("/users", f"User {name} deleted.")

    # -- diagnostics and logs

    def diagnostics_page(self) -> str:
        sess = self.need()
        report = diagnostics.collect(self.data_dir)
        return self.render("diagnostics", sess, report=report, state_lines=diagnostics.state_lines(report),
                           transfer_lines=[ln for ln in transfer_report.render(report["transfers"]) if ln.strip()])

    def reset_process(self, name: str) -> None:
        """Ask the supervisor (through its request folder) to start a failed process again."""
        sess = self.need("admin", post=True)
        from appliance.supervisor.requests import request_reset

        procs = {p["name"]: p for p in diagnostics.collect(self.data_dir)["processes"]}
        if name not in procs:
            abort(404, "No such process.")
        if procs[name]["state"] != "failed":
            self.back("/diagnostics", f"{name} is {procs[name]['state']}, not failed: nothing to do.")
        request_reset(self.data_dir, name, f"web:{sess['username']}")
        self.log(sess, "process-reset", name)
        self.back("/diagnostics", f"Asked the supervisor to start {name} again.")

    def api_status(self) -> dict[str, Any]:
        self.need()
        return json.loads(json.dumps(diagnostics.collect(self.data_dir), default=str))

    def audit_page(self) -> str:
        sess = self.need("admin")
        search = request.query.getunicode("q", "").strip()
        page = _int_arg("page", 1, 1)
        rows, total = audit.page(self.conn(), search=search, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
        return self.render("audit", sess, rows=rows, total=total, page=page, pages=_pages(total), search=search,
                           query=lambda p: urlencode({"q": search, "page": p}), files=self.log_files())

    def assoc_page(self) -> str:
        sess = self.need("admin")
        search = request.query.getunicode("q", "").strip()
        page = _int_arg("page", 1, 1)
        rows, total = index.associations_page(self.conn(), search=search, offset=(page - 1) * PAGE_SIZE,
                                              limit=PAGE_SIZE)
        return self.render("associations", sess, rows=rows, total=total, page=page, pages=_pages(total),
                           search=search, query=lambda p: urlencode({"q": search, "page": p}))

    def hl7_log_page(self) -> str:
        """The hl7 process's log (messages too when hl7.log_messages is on), newest first, read-only."""
        sess = self.need("admin")
        search = request.query.getunicode("q", "").strip()
        page = _int_arg("page", 1, 1)
        rows, total = hl7_logfile.records(self.data_dir, search, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
        return self.render("hl7log", sess, rows=[hl7_logfile.describe(r) for r in rows], total=total, page=page,
                           pages=_pages(total), search=search, query=lambda p: urlencode({"q": search, "page": p}),
                           logging_on=bool(self.settings.get("hl7.log_messages")))

    def log_files(self) -> list[dict[str, Any]]:
        folder = self.data_dir / "logs"
        if not folder.is_dir():
            return []
        return [{"name": p.name, "size": p.stat().st_size, "mtime": p.stat().st_mtime}
                for p in sorted(folder.iterdir()) if p.is_file()]

    def log_file(self, name: str) -> Any:
        """Download a file of <data>/logs (e.g. the DICOM debug log); only names listed there."""
        self.need("admin")
        if name not in {f["name"] for f in self.log_files()}:
            abort(404, "No such log file.")
        self.log(self.session(), "log-download", name)
        return bottle.static_file(name, root=str(self.data_dir / "logs"), mimetype="text/plain", download=name)

    def log_csv(self, name: str) -> str:
        """The whole log (matching the search) as CSV; cells that a spreadsheet would run as formulas are quoted."""
        self.need("admin")
        search = request.query.getunicode("q", "").strip()
        reader = audit.page if name == "audit" else index.associations_page
        rows, _ = reader(self.conn(), search=search, offset=0, limit=100_000)
        out = io.StringIO()
        writer = csv.writer(out)
        if rows:
            writer.writerow(rows[0].keys())
        for row in rows:
            writer.writerow(["'" + str(v) if str(v)[:1] in ("=", "+", "-", "@", "\t", "\r") else v
                             for v in row.values()])
        response.content_type = "text/csv; charset=utf-8"
        response.set_header("Content-Disposition", f'attachment; filename="{name}.csv"')
        return out.getvalue()

    def tls_upload(self) -> None:
        """Certificate and key for HTTPS, checked before use (the reason is shown when refused)."""
        sess = self.need("admin", post=True)
        cert, key = request.files.get("certificate"), request.files.get("key")
        if cert is None or key is None:
            redirect("/settings/http?" + urlencode({"cert_error": "choose both a certificate file and a key file"}))
        try:
            summary = tlsca.install_web_certificate(self.data_dir, cert.file.read(200_000), key.file.read(200_000),
                                                    self.settings.get("http.server_name"))
        except tlsca.CertificateError as exc:
            self.log(sess, "certificate-refused", "http", str(exc))
            redirect("/settings/http?" + urlencode({"cert_error": f"Certificate refused: {exc}"}))
        self.log(sess, "certificate", "http", summary)
        self.back("/settings/http", f"Certificate installed: {summary}. HTTPS uses it within seconds.")

    def tls_remove(self) -> None:
        sess = self.need("admin", post=True)
        if tlsca.remove_web_certificate(self.data_dir):
            self.log(sess, "certificate-removed", "http")
        self.back("/settings/http", "HTTPS uses the device certificate.")

    def ca_pem(self) -> Any:
        self.need()
        path = tlsca.tls_dir(self.data_dir) / "ca.pem"
        if not path.exists():
            abort(404, "No device CA (run burnstation init).")
        return bottle.static_file("ca.pem", root=str(path.parent), mimetype="application/x-pem-file",
                                  download="burnstation-ca.pem")


def readable_cookies(header: str) -> str:
    """The Cookie header without the pairs Python's cookie parser refuses (bottle lets its CookieError
    through: one odd cookie, e.g. set by another service on the same host, made every page a 500)."""
    kept = []
    for pair in header.split(";"):
        try:
            SimpleCookie().load(pair)
        except CookieError:
            continue
        kept.append(pair)
    try:
        SimpleCookie().load(";".join(kept))
    except CookieError:  # pairs that pass alone but not together (a quoted ';'): drop them all
        return ""
    return ";".join(kept)


def _fdate(value: str) -> str:
    """A DICOM date (YYYYMMDD) as YYYY-MM-DD; anything else as it is."""
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _fsize(size: int | float) -> str:
    size = float(size or 0)
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _stacker_text(value: Any) -> str:
    """A stacker as a technician reads it: "49 discs (CD)"; plain values as they are."""
    if isinstance(value, dict):
        level, holds = value.get("level"), value.get("holds")
        text = f"{level} discs" if level is not None else ", ".join(f"{k} {v}" for k, v in value.items())
        return f"{text} ({holds})" if holds else text
    return str(value)


QUERY_LEVELS = ("study", "series", "patient")
QUERY_RETURN = {"patient": ("PatientName", "PatientID", "PatientBirthDate", "NumberOfPatientRelatedStudies"),
                "study": ("PatientName", "PatientID", "StudyDate", "StudyDescription", "AccessionNumber",
                          "ModalitiesInStudy", "StudyInstanceUID", "NumberOfStudyRelatedInstances"),
                "series": ("PatientName", "PatientID", "StudyDate", "Modality", "SeriesNumber", "SeriesDescription",
                           "StudyInstanceUID", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances")}


def _query_keys(q: dict[str, str]) -> dict[str, str]:
    """The form as C-FIND keys: matching keys from the fields, the level's columns as return keys."""
    keys = {k: "" for k in QUERY_RETURN[q["level"]]}
    dates = [q["from"].replace("-", ""), q["to"].replace("-", "")]
    for text in dates:
        if text and not (len(text) == 8 and text.isdigit()):
            raise SettingError(f"query date: YYYY-MM-DD, not {text!r}")
    matching = {"PatientName": q["name"], "PatientID": q["pid"], "AccessionNumber": q["accession"],
                "StudyInstanceUID": q["study"],
                "StudyDate": dates[0] if dates[0] == dates[1] else "-".join(dates) if any(dates) else "",
                ("Modality" if q["level"] == "series" else "ModalitiesInStudy"): q["modality"].upper()}
    if q["level"] == "patient":
        matching = {k: matching[k] for k in ("PatientName", "PatientID")}
    keys.update({k: v for k, v in matching.items() if v})
    return keys


def _transfer_view(t: dict[str, Any]) -> dict[str, Any]:
    """What a transfer row shows (also the /api/transfers item)."""
    kind = f"{t['kind']} (C-{t['method'].upper()})" if t["kind"] == ttjobs.RETRIEVE and t["method"] else t["kind"]
    return {"id": t["id"], "state": t["state"], "kind": kind, "node": t["node"], "rule": t["rule"] or "",
            "what": t["instance_uid"] or t["series_uid"] or t["study_uid"] or "",
            "completed": t["completed"], "warning": t["warning"], "failed": t["failed"], "remaining": t["remaining"],
            "message": t["error"] or t["message"] or "", "burn_job": t["burn_job"] or "",
            "created_at": t["created_at"], "updated_at": t["updated_at"],
            "can_cancel": t["state"] in ("queued", "running") and not t["cancel_requested"],
            "can_retry": t["state"] in ("failed", "cancelled")}


STORAGE_KEYS = ("storage.purge_after_days", "storage.purge_unburned_after_days", "storage.high_water_percent",
                "storage.low_water_percent", "dicom.min_free_mb")


def _days(text: str) -> int | None:
    """The "older than N days" field of a purge (empty: the retention rules as set)."""
    if not text:
        return None
    try:
        days = int(text)
    except ValueError:
        raise SettingError(f"older than days: a whole number of days, not {text!r}") from None
    if not 0 <= days <= 36500:
        raise SettingError(f"older than days: must be from 0 to 36500, not {days}")
    return days


def _ftime(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "-"


def _pages(total: int) -> int:
    return max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)


def _job_view(job: dict[str, Any]) -> dict[str, Any]:
    """What a job row shows (also the /api/jobs item)."""
    discs = job.get("discs") or []
    return {"id": job["id"], "state": job["state"], "progress": round(float(job["progress"] or 0), 3),
            "message": job["error"] or job["message"], "robot": job["robot"], "role": job["role"],
            "patient_name": job["patient_name"], "patient_id": job["patient_id"], "copies": job["copies"],
            "discs": len(discs), "instances": job["instances"], "source": job["source"],
            "created_at": job["created_at"], "updated_at": job["updated_at"],
            "can_cancel": job["state"] in jobs.ACTIVE and not job["cancel_requested"],
            "can_retry": job["state"] in (jobs.FAILED, jobs.CANCELLED)}


def make_app(data_dir: str | Path) -> Callable[..., Iterable[bytes]]:
    """The WSGI callable for `data_dir` (security headers included)."""
    return WebApp(data_dir).wsgi
