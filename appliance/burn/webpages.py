"""The "PLUS WEB" half of a PDI disc: INDEX.HTM, README.TXT and the IHE_PDI/ XHTML pages.

Pages are XHTML 1.0 (well-formed XML, readable by any browser from the disc, no scripts). Every
value from the DICOM files is untrusted: it passes `text.display_text` (one line, no control
characters) and `html.escape` before it is written. Page and image names are counters.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from appliance.burn.catalog import InstanceInfo
from appliance.burn.text import dicom_date, display_text

CSS = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
       "td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left;vertical-align:top}"
       "img{margin:.3em;border:1px solid #888;max-width:100%}.note{color:#a40}")


def esc(value: object) -> str:
    return html.escape(display_text(value, 400), quote=True)


@dataclass
class SeriesEntry:
    uid: str
    number: int
    modality: str
    description: str
    instances: list[InstanceInfo] = field(default_factory=list)
    page: str = ""  # e.g. S00001.HTM inside IHE_PDI/
    previews: list[str] = field(default_factory=list)  # JPEG names inside IHE_PDI/


@dataclass
class StudyEntry:
    uid: str
    date: str
    time: str
    description: str
    accession: str
    institution: str
    series: list[SeriesEntry] = field(default_factory=list)

    @property
    def modalities(self) -> list[str]:
        return sorted({s.modality for s in self.series if s.modality})


@dataclass
class PatientEntry:
    patient_id: str
    name: str
    birth_date: str
    sex: str
    studies: list[StudyEntry] = field(default_factory=list)


def group(infos: Sequence[InstanceInfo]) -> list[PatientEntry]:
    """Patients → studies → series, in the order the instances come (catalog order)."""
    patients: dict[str, PatientEntry] = {}
    studies: dict[tuple[str, str], StudyEntry] = {}
    series: dict[str, SeriesEntry] = {}
    for info in infos:
        patient = patients.get(info.patient_key)
        if patient is None:
            patient = patients[info.patient_key] = PatientEntry(info.patient_id, info.patient_name,
                                                                info.birth_date, info.sex)
        else:  # an object without pixels (a PDF, an SR) often lacks what the images have
            patient.name, patient.birth_date = patient.name or info.patient_name, patient.birth_date or info.birth_date
            patient.sex = patient.sex or info.sex
        study = studies.get((info.patient_key, info.study_uid))
        if study is None:
            study = studies[(info.patient_key, info.study_uid)] = StudyEntry(
                info.study_uid, info.study_date, info.study_time, info.study_description, info.accession,
                info.institution)
            patient.studies.append(study)
        elif not study.date:
            study.date, study.time = info.study_date, info.study_time
        for name in ("description", "accession", "institution"):
            if not getattr(study, name):
                setattr(study, name, getattr(info, {"description": "study_description"}.get(name, name)))
        entry = series.get(info.series_uid)
        if entry is None:
            entry = series[info.series_uid] = SeriesEntry(info.series_uid, info.series_number, info.modality,
                                                          info.series_description)
            entry.page = f"S{len(series):05d}.HTM"
            study.series.append(entry)
        entry.instances.append(info)
    return list(patients.values())


def _page(title: str, body: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
            '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
            '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
            '<head>\n<meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />\n'
            f'<title>{esc(title)}</title>\n<style type="text/css">{CSS}</style>\n</head>\n'
            f'<body>\n{body}</body>\n</html>\n')


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    tmp.replace(path)


def _disc_line(fields: dict[str, str]) -> str:
    where = " · ".join(esc(fields.get(k, "")) for k in ("institution", "department") if fields.get(k))
    return (f'<p>Disc {esc(fields.get("disc_number", "1"))} of {esc(fields.get("disc_count", "1"))} · '
            f'{esc(fields.get("content", "DICOM PLUS WEB"))} · created {esc(fields.get("creation_date", ""))} '
            f'by {esc(fields.get("creator", ""))}</p>\n' + (f'<p>{where}</p>\n' if where else ""))


def _study_table(patients: list[PatientEntry], link_prefix: str) -> str:
    out = []
    for patient in patients:
        out.append(f'<h2>{esc(patient.name) or "(no name)"}</h2>\n<p>Patient ID: {esc(patient.patient_id)} · '
                   f'born {esc(dicom_date(patient.birth_date))} · sex {esc(patient.sex)}</p>\n')
        for study in patient.studies:
            out.append(f'<h3>Study of {esc(dicom_date(study.date))}: {esc(study.description)}</h3>\n'
                       f'<p>Accession number {esc(study.accession)} · {esc(", ".join(study.modalities))} · '
                       f'{esc(study.institution)}</p>\n<table>\n<tr><th>Series</th><th>Modality</th>'
                       '<th>Description</th><th>Images</th></tr>\n')
            for series in study.series:
                link = f'<a href="{esc(link_prefix + series.page)}">{esc(series.number)}</a>'
                out.append(f'<tr><td>{link}</td><td>{esc(series.modality)}</td><td>{esc(series.description)}</td>'
                           f'<td>{len(series.instances)}</td></tr>\n')
            out.append('</table>\n')
    return "".join(out)


def _online(fields: dict[str, str]) -> str:
    """The patient portal link(s) of the disc's studies, when the station gave the disc some."""
    links = fields.get("token_link", "").split()
    if not links:
        return ""
    items = "".join(f'<li><a href="{esc(link)}">{esc(link)}</a></li>\n' for link in links)
    return (f'<p>These images are also online for a limited time (the QR code on the disc label opens the same '
            f'link):</p>\n<ul class="online">\n{items}</ul>\n')


def write_pages(tree: Path, patients: list[PatientEntry], fields: dict[str, str], notes: Sequence[str]) -> None:
    """INDEX.HTM at the root and IHE_PDI/INDEX.HTM + one page per series (previews already there)."""
    pdi = tree / "IHE_PDI"
    pdi.mkdir(exist_ok=True)
    note_html = "".join(f'<p class="note">{esc(n)}</p>\n' for n in notes)
    title = f'Medical images: {fields.get("patient_name", "")}'
    root_body = (f'<h1>{esc(title)}</h1>\n' + _disc_line(fields) + note_html
                 + '<p>This disc holds medical images in DICOM format (folder DICOM, index file DICOMDIR) '
                 'for a DICOM viewer, and a copy for web browsers.</p>\n'
                 '<p><a href="IHE_PDI/INDEX.HTM">Show the images in this browser</a> · '
                 '<a href="README.TXT">Read me</a></p>\n' + _online(fields) + _study_table(patients, "IHE_PDI/"))
    _write(tree / "INDEX.HTM", _page(title, root_body))
    pdi_body = (f'<h1>{esc(title)}</h1>\n' + _disc_line(fields) + note_html
                + '<p><a href="../INDEX.HTM">Back to the disc</a></p>\n' + _study_table(patients, ""))
    _write(pdi / "INDEX.HTM", _page(title, pdi_body))
    for patient in patients:
        for study in patient.studies:
            for series in study.series:
                heading = (f'{patient.name} · {dicom_date(study.date)} {study.description} · '
                           f'series {series.number} {series.modality} {series.description}')
                images = "".join(
                    f'<img src="{esc(name)}" alt="{esc(series.description or "image")} {n}" />\n'
                    for n, name in enumerate(series.previews, 1)) or "<p>No preview for this series.</p>\n"
                body = (f'<h1>{esc(heading)}</h1>\n<p>{_count(series.instances)} · '
                        '<a href="INDEX.HTM">All series</a></p>\n'
                        f'<div>\n{images}</div>\n<p>Previews are reduced; the full images are in the DICOM '
                        'folder for a DICOM viewer.</p>\n')
                _write(pdi / series.page, _page(heading, body))


def _count(instances: Sequence[InstanceInfo]) -> str:
    """ "3 images", or "1 object" for what has no pixels (reports, PDFs)."""
    noun = "image" if all(i.rows and i.columns for i in instances) else "object"
    return f"{len(instances)} {noun}" + ("" if len(instances) == 1 else "s")


def write_readme(tree: Path, patients: list[PatientEntry], fields: dict[str, str], notes: Sequence[str],
                 media_profile: str) -> None:
    """README.TXT: what the disc holds, who made it and when, how to view and verify it."""
    lines = [
        "MEDICAL IMAGES ON DISC (IHE Portable Data for Imaging, DICOM PLUS WEB)",
        "",
        f"Disc {fields.get('disc_number', '1')} of {fields.get('disc_count', '1')}",
        f"Created: {fields.get('creation_date', '')} by {fields.get('creator', '')}",
        f"Institution: {fields.get('institution', '')}",
        f"Department: {fields.get('department', '')}",
        f"Media profile: {media_profile}",
        "",
        "CONTENTS",
    ]
    for patient in patients:
        lines.append(f"Patient: {display_text(patient.name) or '(no name)'} (ID {display_text(patient.patient_id)}, "
                     f"born {dicom_date(patient.birth_date)}, sex {display_text(patient.sex)})")
        for study in patient.studies:
            lines.append(f"  Study {dicom_date(study.date)} {display_text(study.description)} "
                         f"(accession {display_text(study.accession)}; {', '.join(study.modalities)}; "
                         f"{len(study.series)} series, {_count([i for s in study.series for i in s.instances])})")
            for series in study.series:
                lines.append(f"    Series {series.number} {display_text(series.modality)} "
                             f"{display_text(series.description)}: {_count(series.instances)}")
    links = fields.get("token_link", "").split()
    if links:
        lines += ["", "ONLINE", "These images can also be viewed and downloaded online for a limited time",
                  "(the QR code on the disc label opens the same link):"] + [f"  {link}" for link in links]
    if notes:
        lines += ["", "NOTES"] + [display_text(n, 400) for n in notes]
    lines += [
        "",
        "HOW TO VIEW",
        "- In a web browser: open INDEX.HTM on this disc (previews, no installation needed).",
        "- In a DICOM viewer: open the DICOMDIR file (or the disc) in the viewer; the images are",
        "  in the DICOM folder. These are the full diagnostic images.",
        "",
        "HOW TO VERIFY",
        "MANIFEST.SHA lists the SHA-256 checksum of every file on the disc. In the disc's top folder run",
        "  sha256sum -c MANIFEST.SHA            (Linux)",
        "  shasum -a 256 -c MANIFEST.SHA        (macOS)",
        "",
        "This disc contains confidential patient information. Keep it safe.",
        "",
    ]
    tmp = tree / "README.TXT.tmp"
    tmp.write_text("\r\n".join(lines), encoding="utf-8", newline="")
    tmp.replace(tree / "README.TXT")
