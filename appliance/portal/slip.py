"""A printable slip for a patient link (the technician UI prints it): link, QR code, validity.

Self-contained XHTML with the QR code as inline SVG (segno): no script, no external resource, so
the technician page can show it under a strict CSP and the browser prints it as it is.
"""

from __future__ import annotations

import datetime as dt
from html import escape

import segno


def qr_svg(link: str, scale: int = 4) -> str:
    """The QR code of `link` as an inline SVG element (error correction M, quiet zone 4)."""
    qr = segno.make_qr(link, error="m", boost_error=False)
    return qr.svg_inline(scale=scale, border=4, dark="#000", light="#fff", omitsize=False)


def slip_html(link: str, *, patient_name: str, study_date: str, study_description: str, expires_at: float,
              institution: str = "", department: str = "", stylesheet: str = "") -> str:
    """The slip as one HTML document; every text is escaped (names come from DICOM files).
    `stylesheet`: a CSS URL instead of the inline style (for pages whose CSP forbids inline styles)."""
    until = dt.datetime.fromtimestamp(expires_at).strftime("%Y-%m-%d")
    e = escape
    where = " · ".join(e(x) for x in (institution, department) if x)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Your images online</title>'
        + (f'<link rel="stylesheet" href="{e(stylesheet)}">' if stylesheet else
           '<style>body{font-family:"DejaVu Sans",Arial,sans-serif;margin:2em}'
           '.link{font-family:monospace;word-break:break-all;font-size:0.9em}</style>')
        + '</head><body>\n'
        + (f"<p>{where}</p>\n" if where else "")
        + f"<h1>Your images online</h1>\n<p>{e(patient_name)} · study of {e(study_date)} {e(study_description)}</p>\n"
        f"<div>{qr_svg(link)}</div>\n<p>Scan the code, or type this address:</p>\n"
        f'<p class="link">{e(link)}</p>\n<p>The link works until {until}. Keep it private: whoever has it '
        "can see and download these images.</p>\n"
        + ('<p class="back"><a href="/tokens">All patient links</a></p>\n' if stylesheet else "")
        + "</body></html>\n")
