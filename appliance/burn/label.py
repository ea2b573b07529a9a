"""The disc label: merge fields for robots that print templates, and a rendered disc-shaped PNG.

Merge fields are plain one-line strings (no control characters: drivers put them in job files),
still untrusted: a driver must escape them for its own format. The PNG is drawn with Pillow using
a TrueType font found through fontconfig: DejaVu Sans for Latin, Greek and Cyrillic, and a CJK
font (Droid Sans Fallback, Noto CJK or IPA) for Japanese, Chinese and Korean characters, chosen
per character run because no single installed font covers all of them.
"""

from __future__ import annotations

import datetime as dt
import functools
import subprocess
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from appliance.burn.text import dicom_date, display_text
from appliance.burn.webpages import PatientEntry

CONTENT = "DICOM PLUS WEB"
SIZE = 1200  # pixels across (a 118 mm disc at about 260 dpi)
HUB = 0.19  # hub hole radius / disc radius (printable area starts a bit further out)

_FALLBACK_FONTS = {
    "latin": ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"],
    "latin-bold": ["/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"],
    "cjk": ["/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
            "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
            "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf"],
}
_PATTERNS = {"latin": "DejaVu Sans", "latin-bold": "DejaVu Sans:bold", "cjk": ":lang=ja"}


def label_fields(patients: Sequence[PatientEntry], *, institution: str, department: str, creator: str,
                 disc_number: int, disc_count: int, media: str, created: dt.datetime | None = None,
                 token_link: str | None = None) -> dict[str, str]:
    """The merge fields of one disc (all values one line; several patients are joined with "; ")."""
    created = created or dt.datetime.now()
    studies = [s for p in patients for s in p.studies]

    def join(values: Sequence[str]) -> str:
        unique = list(dict.fromkeys(v for v in values if v))
        return display_text("; ".join(unique), 300)

    fields = {
        "patient_name": join([p.name for p in patients]),
        "patient_id": join([p.patient_id for p in patients]),
        "birth_date": join([dicom_date(p.birth_date) for p in patients]),
        "sex": join([p.sex for p in patients]),
        "study_dates": join([dicom_date(s.date) for s in studies]),
        "modalities": join(sorted({m for s in studies for m in s.modalities})),
        "study_descriptions": join([s.description for s in studies]),
        "accession_numbers": join([s.accession for s in studies]),
        "institution": display_text(institution) or join([s.institution for s in studies]),
        "department": display_text(department),
        "creator": display_text(creator),
        "creation_date": created.strftime("%Y-%m-%d"),
        "creation_time": created.strftime("%H:%M"),
        "disc_number": str(disc_number),
        "disc_count": str(disc_count),
        "disc_of": f"{disc_number} of {disc_count}",
        "media": media,
        "content": CONTENT,
        "study_count": str(len(studies)),
        "image_count": str(sum(len(se.instances) for s in studies for se in s.series)),
    }
    if token_link:
        fields["token_link"] = display_text(token_link, 2000)  # one link per study, space-separated
    return fields


@functools.cache
def font_file(kind: str) -> str | None:
    """A TrueType file for "latin", "latin-bold" or "cjk", from fontconfig or well-known paths."""
    candidates = []
    try:
        found = subprocess.run(["fc-match", "-f", "%{file}", _PATTERNS[kind]], capture_output=True, text=True,
                               timeout=10).stdout.strip()
        if found:
            candidates.append(found)
    except (OSError, subprocess.SubprocessError):
        pass
    candidates += _FALLBACK_FONTS[kind]
    for path in candidates:
        if kind == "cjk" and "DejaVu" in path:
            continue  # fc-match answers with DejaVu when no CJK font is installed
        if Path(path).is_file():
            return path
    return None


@functools.cache
def _font(kind: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = font_file(kind) or (font_file("latin") if kind != "latin" else None)
    if path:
        return ImageFont.truetype(path, size)
    return ImageFont.load_default(size)


def is_cjk(char: str) -> bool:
    code = ord(char)
    return (0x1100 <= code <= 0x11FF or 0x2E80 <= code <= 0xA4CF or 0xAC00 <= code <= 0xD7AF
            or 0xF900 <= code <= 0xFAFF or 0xFE30 <= code <= 0xFE4F or 0xFF00 <= code <= 0xFFEF
            or 0x20000 <= code <= 0x3FFFF)


def _runs(text: str, bold: bool) -> list[tuple[str, str]]:
    """Split text into (font kind, run) so each run is drawn with a font that has its glyphs."""
    runs: list[tuple[str, str]] = []
    for char in text:
        kind = "cjk" if is_cjk(char) else ("latin-bold" if bold else "latin")
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + char)
        else:
            runs.append((kind, char))
    return runs


def _width(runs: list[tuple[str, str]], size: int) -> float:
    return sum(_font(kind, size).getlength(run) for kind, run in runs)


def _draw_line(draw: ImageDraw.ImageDraw, text: str, y: float, size: int, max_width: float,
               bold: bool = False, fill: str = "#111") -> None:
    """One centred line, shrunk (down to 60 %) and then cut with "…" to fit `max_width`."""
    text = display_text(text, 200)
    runs = _runs(text, bold)
    smallest = max(12, int(size * 0.6))
    while size > smallest and _width(runs, size) > max_width:
        size -= 2
    while _width(runs, size) > max_width and len(text) > 1:
        text = text[:-2] + "…"
        runs = _runs(text, bold)
    x = (SIZE - _width(runs, size)) / 2
    for kind, run in runs:
        font = _font(kind, size)
        draw.text((x, y), run, font=font, fill=fill, anchor="ls")
        x += font.getlength(run)


QR_SIDE = 280  # pixels (27 mm printed): a 100-character link at level M is 41 modules, about 6 px each


def qr_matrix(link: str) -> list[list[bool]]:
    """The QR code of `link` (error correction M), with its 4-module quiet zone."""
    import segno

    qr = segno.make_qr(link, error="m", boost_error=False)
    return [[bool(v) for v in row] for row in qr.matrix_iter(scale=1, border=4)]


def _draw_qr(image: Image.Image, link: str, cx: float, cy: float) -> None:
    matrix = qr_matrix(link)
    n = len(matrix)
    module = max(1, QR_SIDE // n)
    side = module * n
    qr = Image.new("L", (n, n), 255)
    qr.putdata([0 if v else 255 for row in matrix for v in row])
    qr = qr.resize((side, side), Image.Resampling.NEAREST)  # whole pixels per module: sharp edges
    image.paste(qr.convert("RGBA"), (int(cx - side / 2), int(cy - side / 2)))


def _caption(draw: ImageDraw.ImageDraw, link: str, cx: float, y: float) -> None:
    """Under a QR code: what it is, then the link itself in three short lines (address, and the
    64-character token in two halves) so that it can be typed."""
    base, _, token = link.partition("?")
    lines = [("Your images online", 20, "#333"), (base + "?", 15, "#111"), (token[:32], 15, "#111"),
             (token[32:], 15, "#111")]
    for text, size, fill in lines:
        if not text:
            continue
        while size > 10 and _font("latin", size).getlength(text) > QR_SIDE + 20:
            size -= 1
        font = _font("latin", size)
        draw.text((cx - font.getlength(text) / 2, y), text, font=font, fill=fill, anchor="ls")
        y += size + 4


def render_label(fields: dict[str, str], out: Path) -> Path:
    """A round PNG (transparent outside the disc, hub hole cut out) with the main merge fields."""
    scale = 2  # draw the circle edges supersampled, then box-reduce (smooth edges, cheap)
    mask = Image.new("L", (SIZE * scale, SIZE * scale), 0)
    mdraw = ImageDraw.Draw(mask)
    mdraw.ellipse((0, 0, SIZE * scale - 1, SIZE * scale - 1), fill=255)
    hub = SIZE * scale * HUB / 2
    centre = SIZE * scale / 2
    mdraw.ellipse((centre - hub, centre - hub, centre + hub, centre + hub), fill=0)
    mask = mask.reduce(scale)
    image = Image.new("RGBA", (SIZE, SIZE), (255, 255, 255, 255))
    draw = ImageDraw.Draw(image)
    c = SIZE / 2
    ring = SIZE * 0.12  # edge of the clear hub area: no text inside
    draw.ellipse((c - ring, c - ring, c + ring, c + ring), outline="#999", width=3)
    draw.ellipse((2, 2, SIZE - 3, SIZE - 3), outline="#999", width=3)

    def chord(y: float) -> float:  # usable width of the disc at height y (margin 6 %)
        r = SIZE * 0.47
        dy = abs(y - c)
        return max(0.0, 2 * (max(r * r - dy * dy, 0) ** 0.5)) * 0.9

    top = [
        (fields.get("institution", ""), 30, False),
        (fields.get("department", ""), 26, False),
        (fields.get("patient_name", ""), 52, True),
        (f"ID {fields.get('patient_id', '')} · born {fields.get('birth_date', '')} · {fields.get('sex', '')}", 28, False),
        (f"{fields.get('study_dates', '')} · {fields.get('modalities', '')}", 28, False),
        (fields.get("study_descriptions", ""), 28, False),
    ]
    def draw_block(lines: list[tuple[str, int, bool]], y: float, spacing: float) -> None:
        for text, size, bold in lines:
            if text.strip(" ·"):  # an empty field leaves no blank line
                _draw_line(draw, text, y + size, size, chord(y + size / 2), bold)
                y += size * spacing

    draw_block(top, SIZE * 0.07, 1.4)
    bottom = [
        (f"Accession {fields.get('accession_numbers', '')}" if fields.get("accession_numbers") else "", 28, False),
        (f"Disc {fields.get('disc_of', '1 of 1')} · {fields.get('media', '')}", 38, True),
        (fields.get("content", CONTENT), 40, True),
        (f"Created {fields.get('creation_date', '')} · {fields.get('creator', '')}", 26, False),
    ]
    draw_block(bottom, SIZE * 0.64, 1.45)
    links = fields.get("token_link", "").split()
    for link, x in zip(links, (0.21, 0.79), strict=False):  # left and right of the hub: room for two
        _draw_qr(image, link, SIZE * x, c - 50)
        _caption(draw, link, SIZE * x, c - 50 + QR_SIDE / 2 + 22)
    image.putalpha(mask)
    tmp = out.with_name(out.name + ".tmp")
    image.save(tmp, "PNG", compress_level=1)  # level 6 costs 0.3 s for a mostly white image
    tmp.replace(out)
    return out
