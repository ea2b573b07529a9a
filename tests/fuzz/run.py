"""`make fuzz`: every in-process target under atheris, then every black-box target against a live
station, each for FUZZ_SECONDS (default 300); writes docs/reliability/fuzz.md.

    python tests/fuzz/run.py --seconds 300 [--only pdu,http] [--report docs/reliability/fuzz.md]

An atheris target stops at its first failure (libFuzzer): it is restarted for the rest of its
time, so one run can report several findings. Failing inputs land in tests/fuzz/crashes/<target>/
(the normal suite replays them all: tests/test_fuzz_smoke.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

# what each target tries and what must hold (the report's columns)
IN_PROCESS = {
    "pdu": ("Every PDU type as the station's DUL decodes it (pynetdicom's PDU classes), its primitive, and "
            "the station's own C-STORE-RQ command reader (`pnd_tuning._decode_store_rq`)",
            "decode fails (the DUL's A-ABORT) or converts; the station's pre-check drops what would fail in "
            "the state machine; `_decode_store_rq` never raises and equals the library's primitive"),
    "rawparse": ("Data sets in implicit/explicit VR LE (and others) with any bytes, into `rawparse.parse`",
                 "never raises; whenever it answers, its index record equals pydicom's"),
    "hl7": ("One frame's bytes through `message.decode`, `mapping.orders` and `build_ack`, three default charsets",
            "bad input is an HL7Error (AE/AR with a reason), never another exception; the ACK is well formed"),
    "mllp": ("Any bytes cut into arbitrary reads through the listener's framing (`_Connection._serve`)",
             "ends with the input; hands on no start/end block inside a payload; one framed reply per frame"),
    "web": ("A request to every route of the web app and the portal through WSGI, logged in as admin with "
            "CSRF: path values, query strings, bodies (url-encoded, multipart, other), cookies, headers, "
            "methods; the query page's form through `_query_keys` and `build_identifier`",
            "never a 5xx"),
    "settings": ("`Settings.update` with any key and text value (what `config set` and the forms call)",
                 "saved (and read back as converted) or refused with a SettingError"),
}
BLACK_BOX = {
    "dicom-associate": ("A-ASSOCIATE-RQ with 0..130 presentation contexts, odd and lying item and PDU lengths, "
                        "unknown items, user-identity items up to 70 kB, odd AE titles and maximum lengths",
                        "A-ASSOCIATE-AC/RJ or A-ABORT (or a close) within 10 s"),
    "dicom-cut": ("A-ASSOCIATE-RQ, P-DATA (C-ECHO) and A-RELEASE-RQ cut at a random byte, then end of stream",
                  "close or A-ABORT within 10 s"),
    "dicom-cut-sweep": ("The same PDUs cut after every one of their bytes (deterministic sweep)",
                        "close or A-ABORT within 10 s"),
    "dicom-oversized": ("PDU headers claiming up to 4 GiB with 64 bytes sent; P-DATA of up to 3 MB "
                        "(announced maximum 16 kB)",
                        "no memory jump (> 256 MB) in the station's processes; an answer or close"),
    "dicom-p-data-order": ("P-DATA fragments out of order: data before command, unfinished commands, "
                           "unknown context IDs and flags, PDV lengths that lie",
                           "P-DATA answer, A-ABORT or close within 10 s"),
    "dicom-c-store": ("C-STORE whose data set has flipped bytes, changed length fields, cuts and "
                      "insertions, in 1..4 fragments",
                      "a C-STORE-RSP (success or a failure status) or A-ABORT; storage and index consistent"),
    "hl7-mllp": ("ORM/OMI/other messages with fuzzed segments, fields, escapes, MSH-18 charsets, codecs, "
                 "line ends, binary tails; framing right and wrong, split across sends",
                 "an ACK with MSA-1 AA/AE/AR (never \"internal error\") for each frame, within 10 s"),
    "http": ("Every page, API and portal route over HTTP: fuzzed path values, query strings, forms, "
             "methods, cookies (incl. unparseable), Range/Origin/CSRF headers, lying Content-Length",
             "a status line below 500 within 10 s"),
}
AFTER_EACH = {"dicom": "the station is up, a C-ECHO succeeds, no temp file in storage, every index row "
                       "has its file and every file its row",
              "hl7": "the station is up, a well-formed ORM^O01 is ACKed AA",
              "http": "the station is up, GET /jobs answers 200"}

# findings fixed on this branch (kept as reproducers and regression tests)
FINDINGS = [
    ("dicom-oversized", "a 70-byte A-ASSOCIATE-RQ header claiming 256 MB..4 GB made the dicom process "
     "allocate (and zero) that much at once: a handful of connections could exhaust memory",
     "`pnd_tuning._socket_recv` grows its buffer with the bytes that arrive (never more than twice them)",
     "test_fuzz_findings.py::test_claimed_pdu_length_is_not_allocated"),
    ("dicom-associate", "a presentation context without a transfer syntax made pynetdicom's negotiation "
     "raise in the association thread: no answer until the time-out",
     "the acceptor's negotiation wrapper rejects such a request (A-ASSOCIATE-RJ, no reason given)",
     "test_fuzz_findings.py::test_dicom_findings_answered_at_once (station)"),
    ("dicom-associate", "an A-ASSOCIATE-RQ that decodes but whose primitive fails (presentation context "
     "ID 0) ended the DUL without a word: silence until the time-out",
     "the DUL checks A-ASSOCIATE/RELEASE PDUs before the state machine: A-ABORT at once",
     "test_fuzz_findings.py::test_unconvertible_pdu_is_aborted, ::test_dicom_findings_answered_at_once"),
    ("dicom-associate", "a broken PDU followed by part of another: the A-ABORT waited for the time-out "
     "(the DUL read the next header before acting on the queued event)",
     "the station's DUL loop acts on queued events before it reads again",
     "test_fuzz_findings.py::test_dicom_findings_answered_at_once (station)"),
    ("hl7", "a blank line between segments (\\r\\r) raised IndexError in the hl7 library: answered "
     "\"AE internal error\" (a RIS retries an AE) instead of taking the message",
     "blank segments are dropped before parsing; any hl7 library error is an AR with its reason",
     "test_fuzz_findings.py::test_blank_segment_is_no_internal_error"),
    ("mllp, hl7-mllp", "a frame ending with the end block but no CR: the listener waited for the CR, so a "
     "sender waiting for its ACK got it 30 s later (AR, \"truncated\"), or AR when it closed",
     "a frame is complete at its end block; a CR that follows later is skipped as a line break between frames",
     "test_fuzz_findings.py::test_end_block_without_cr_is_answered_at_once, ::test_end_block_then_close_is_a_frame"),
    ("web", "one Cookie pair Python's parser refuses (e.g. `a(b=1` or `=k=v`, set by another service on the same "
     "host) made every page a 500 (bottle lets CookieError through)",
     "`webui.app.readable_cookies` drops such pairs before bottle reads the header",
     "test_fuzz_findings.py::test_unparseable_cookie_is_ignored"),
]


START_GRACE = 900  # seconds allowed beyond FUZZ_SECONDS for atheris' start (slow under a load average of 25)


def run_atheris(target: str, seconds: int) -> dict[str, Any]:
    """Run one in-process target for `seconds` (restarted after each failure); libFuzzer's figures."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "hardware-sim"),
                                                       os.environ.get("PYTHONPATH", "")]))
    deadline = time.monotonic() + seconds
    result: dict[str, Any] = {"target": target, "executions": 0, "coverage": 0, "features": 0, "corpus": 0,
                              "failures": [], "seconds": 0.0}
    crashes = HERE / "crashes" / target
    started = time.monotonic()
    while (left := int(deadline - time.monotonic())) >= 3:
        before = set(crashes.glob("crash-*")) if crashes.exists() else set()
        try:  # libFuzzer's clock starts after atheris instrumented the imports: minutes on a loaded machine
            proc = subprocess.run([sys.executable, str(HERE / "run_atheris.py"), target, "--seconds", str(left)],
                                  capture_output=True, text=True, errors="replace", env=env, cwd=REPO,
                                  timeout=left + START_GRACE)
        except subprocess.TimeoutExpired:
            result["failures"].append({"reason": f"harness: no end within {left + START_GRACE} s", "file": ""})
            break
        out = proc.stdout + proc.stderr
        result["executions"] += int(_last(r"stat::number_of_executed_units:\s*(\d+)", out) or 0)
        result["coverage"] = max(result["coverage"], int(_last(r"cov: (\d+)", out) or 0))
        result["features"] = max(result["features"], int(_last(r"ft: (\d+)", out) or 0))
        result["corpus"] = max(result["corpus"], int(_last(r"corp: (\d+)", out) or 0))
        new = sorted(set(crashes.glob("crash-*")) - before) if crashes.exists() else []
        if proc.returncode != 0:
            error = _last(r"\n([A-Za-z_.]*(?:Error|Exception)[^\n]*)\n", out) or f"exit {proc.returncode}"
            result["failures"].append({"reason": error[:300],
                                       "file": str(new[0].relative_to(REPO)) if new else ""})
            if not new:
                break  # not a finding libFuzzer could keep (the harness itself failed): stop here
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _last(pattern: str, text: str) -> str | None:
    found = re.findall(pattern, text)
    return found[-1] if found else None


def run_black_box(targets: list[str], seconds: int) -> list[dict[str, Any]]:
    """Start a station on free ports (tests/support.Station) and run each black-box target on it."""
    import blackbox
    from support import Station, wait_dicom

    def start(station: Station) -> None:
        try:
            station.start()
        except TimeoutError:  # a loaded machine: the process runs, give it longer than the tests' 30 s
            wait_dicom(station.port, station.aet, timeout=240)

    os.environ.setdefault("BURNSTATION_TEST_SCRYPT_N", "1024")
    results = []
    with tempfile.TemporaryDirectory(prefix="bs-fuzz-") as folder:
        station = Station(Path(folder) / "data")
        start(station)
        try:
            live = blackbox.Live(station)
            for target in targets:
                answers_before = dict(live.answers)
                if target == "dicom-cut-sweep":
                    start = time.monotonic()
                    before = live.examples
                    failures = []
                    try:
                        blackbox.sweep_cut_every_byte(live)
                    except blackbox.PropertyFailed:
                        failures = [blackbox.save_failure(f) for f in live.failures[-1:]]
                    result = {"target": target, "examples": live.examples - before,
                              "seconds": round(time.monotonic() - start, 1), "failures": failures}
                else:
                    result = blackbox.fuzz(live, target, seconds)
                result["answers"] = {k: v - answers_before.get(k, 0) for k, v in live.answers.items()
                                     if v - answers_before.get(k, 0)}
                result["up"] = live.up()
                results.append(result)
                print(json.dumps(result), flush=True)
                if not live.up():
                    station.stop()
                    station = Station(Path(folder) / "data")
                    start(station)
                    live = blackbox.Live(station)
        finally:
            station.stop()
    return results


def merge(previous: Path, inproc: list[dict[str, Any]], black: list[dict[str, Any]]
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """With --only: this run's targets replace theirs in the last run's figures (kept beside the report)."""
    if not previous.exists():
        return inproc, black
    doc = json.loads(previous.read_text())
    fresh = {r["target"]: {**r, "rerun": True} for r in inproc + black}
    return ([fresh.pop(r["target"], r) for r in doc["in_process"]] + [r for r in inproc if r["target"] in fresh],
            [fresh.pop(r["target"], r) for r in doc["black_box"]] + [r for r in black if r["target"] in fresh])


def write_report(path: Path, seconds: int, inproc: list[dict[str, Any]], black: list[dict[str, Any]],
                 started: float) -> None:
    def failures(r: dict[str, Any]) -> str:
        rerun = " (rerun after a fix)" if r.get("rerun") else ""
        if not r["failures"]:
            return "none" + rerun
        return rerun + "<br>".join(f"{f['reason'][:160]} (`{f['file']}`)".replace("|", "\\|") for f in r["failures"])

    lines = [
        "# Fuzzing report (`make fuzz`)",
        "",
        f"Written by `tests/fuzz/run.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, "
        f"**FUZZ_SECONDS={seconds}** per target"
        + (" (shorter than the default 300: the run shared a 2-core machine with other work)." if seconds < 300 else "."),
        f"Command: `make fuzz FUZZ_SECONDS={seconds}` (it runs `python tests/fuzz/run.py --seconds {seconds}`). "
        f"Python {sys.version.split()[0]}. Time (s) per target includes atheris' start (instrumenting the "
        "imported libraries) and, for the black-box targets, Hypothesis' shrinking of a failure.",
        *(["", "Rows marked \"rerun after a fix\" were run again (`run.py --only ...`, same FUZZ_SECONDS) after "
           "the first run's finding in them was fixed; that finding is in the last table."]
          if any(r.get("rerun") for r in inproc + black) else []),
        "",
        "Failing inputs are kept in `tests/fuzz/crashes/<target>/`; the normal suite replays every one "
        "of them (`tests/test_fuzz_smoke.py`) and each finding has its own regression test "
        "(`tests/test_fuzz_findings.py`). The corpora the coverage-guided runs grow are kept in "
        "`tests/fuzz/corpus/<target>/`.",
        "",
        "## In-process parsers (atheris, coverage-guided)",
        "",
        "| Target | What was tried | Executions | Time (s) | Coverage (edges / features) | Corpus | What held | Findings in this run |",
        "|---|---|---:|---:|---|---:|---|---|",
    ]
    for r in inproc:
        tried, held = IN_PROCESS[r["target"]]
        lines.append(f"| `{r['target']}` | {tried} | {r['executions']:,} | {r['seconds']} | {r['coverage']} / "
                     f"{r['features']} | {r['corpus']} | {held} | {failures(r)} |")
    lines += [
        "",
        "## Black-box clients against a live station (Hypothesis)",
        "",
        "One station (`burnstation run`, the test fixtures of `tests/support.py`) on free loopback ports. "
        "After every example: " + "; ".join(f"{k}: {v}" for k, v in AFTER_EACH.items()) + ".",
        "",
        "| Target | What was tried | Examples | Time (s) | Answers seen | What held | Findings in this run |",
        "|---|---|---:|---:|---|---|---|",
    ]
    for r in black:
        tried, held = BLACK_BOX[r["target"]]
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r.get("answers", {}).items())) or "-"
        up = "" if r.get("up", True) else " **station down**"
        lines.append(f"| `{r['target']}` | {tried} | {r['examples']:,} | {r['seconds']} | {answers} | {held}{up} | "
                     f"{failures(r)} |")
    lines += [
        "",
        "PDU types: 0x2 A-ASSOCIATE-AC, 0x3 A-ASSOCIATE-RJ, 0x4 P-DATA, 0x6 A-RELEASE-RP, 0x7 A-ABORT "
        "(connections the station closed without a PDU are not counted).",
        "",
        "## Findings fixed (found while building this suite)",
        "",
        "| Target | What broke | Fix | Regression test |",
        "|---|---|---|---|",
    ]
    for target, what, fix, test in FINDINGS:
        lines.append(f"| `{target}` | {what} | {fix} | `{test}` |")
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", 300)))
    parser.add_argument("--only", default="", help="comma-separated targets (default: all)")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "reliability" / "fuzz.md")
    parser.add_argument("--render", action="store_true", help="only write the report from the last figures")
    args = parser.parse_args()
    only = {t for t in args.only.split(",") if t}
    if args.render:
        doc = json.loads(args.report.with_suffix(".json").read_text())
        write_report(args.report, doc["seconds"], doc["in_process"], doc["black_box"], doc["started"])
        return 0
    started = time.time()
    inproc = []
    for target in IN_PROCESS:
        if not only or target in only:
            inproc.append(run_atheris(target, args.seconds))
            print(json.dumps(inproc[-1]), flush=True)
    black = run_black_box([t for t in BLACK_BOX if not only or t in only], args.seconds)
    figures = args.report.with_suffix(".json")
    if only and figures.exists():
        started = json.loads(figures.read_text())["started"]  # the report dates from the full run
        inproc, black = merge(figures, inproc, black)
    figures.parent.mkdir(parents=True, exist_ok=True)
    figures.write_text(json.dumps({"seconds": args.seconds, "started": started, "in_process": inproc,
                                   "black_box": black}, indent=1) + "\n")
    write_report(args.report, args.seconds, inproc, black, started)
    print(f"report: {args.report}")
    found = sum(len(r["failures"]) for r in inproc + black)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
