"""Automatic tokens (`http.token_on_disc`): one per study of a disc job; the link's QR code on the
label decodes (zbarimg) to the link printed in README.TXT, INDEX.HTM and the robots' merge fields."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from support import write_study

from appliance import db, index
from appliance.burn import dispatch, jobs
from appliance.config import SettingError, Settings
from appliance.portal import tokens
from drivers.epson import jdf


@pytest.fixture
def env(tmp_path: Path):
    settings = Settings(tmp_path)
    settings.initialize()
    conn = db.connect(tmp_path)
    yield settings, conn
    conn.close()


def job_of(conn, tmp_path: Path, studies: int) -> tuple[str, list[str]]:
    """A manual job holding `studies` studies of one patient; returns (job id, study UIDs)."""
    uids, sops = [], []
    for n in range(studies):
        for f in write_study(tmp_path / "in" / str(n), n_series=1, per_series=2, study_date=f"2024011{n}"):
            from pydicom import dcmread

            ds = dcmread(f, stop_before_pixels=True)
            index.add_instance(conn, index.record_from_dataset(ds, str(f), f.stat().st_size,
                                                               str(ds.file_meta.TransferSyntaxUID)))
            sops.append(str(ds.SOPInstanceUID))
            if str(ds.StudyInstanceUID) not in uids:
                uids.append(str(ds.StudyInstanceUID))
    return jobs.create_job(conn, role="epson", sop_uids=sops, source="manual"), uids


def zbar(png: Path) -> list[str]:
    proc = subprocess.run(["/usr/bin/zbarimg", "--quiet", "--raw", str(png)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_setting_is_validated(env):
    settings, _ = env
    assert settings.get("http.token_on_disc") is False
    with pytest.raises(SettingError, match="http.token_on_disc"):
        settings.update({"http.token_on_disc": "maybe"})


def test_disc_job_gets_a_token_per_study_with_qr_readme_index_and_merge_field(env, tmp_path):
    settings, conn = env
    settings.update({"http.token_on_disc": "true", "http.server_name": "images.example.org", "http.port": "8443",
                     "http.ssl": "true", "http.token_days": "30"})
    job_id, studies = job_of(conn, tmp_path, 2)
    assert dispatch.build_job(conn, settings, tmp_path, dispatch.claim_next_build(conn))
    disc = dispatch.disc_from_doc(jobs.get_job(conn, job_id)["discs"][0])
    links = disc.label_fields["token_link"].split()
    assert len(links) == 2
    for link in links:
        assert re.fullmatch(r"https://images\.example\.org:8443/token\?[A-Za-z0-9]{64}", link), link
    # each link opens its own study
    assert [tokens.check(conn, link.split("?", 1)[1]).token.study_uid for link in links] == studies
    assert {t["origin"] for t in tokens.list_tokens(conn)} == {f"disc {job_id}"}
    assert sorted(zbar(disc.label_image)) == sorted(links)
    readme = (disc.tree / "README.TXT").read_bytes().decode("utf-8")
    index_htm = (disc.tree / "INDEX.HTM").read_text(encoding="utf-8")
    merge = jdf.build_merge_file(disc.label_fields)
    assert f"token_link={' '.join(links)}\r\n" in merge
    for link in links:
        assert f"  {link}\r\n" in readme
        assert f'<a href="{link}">{link}</a>' in index_htm


def test_one_study_label_and_setting_off(env, tmp_path):
    settings, conn = env
    settings.update({"http.server_name": "pacs.local", "http.port": "8080"})
    job_id, _ = job_of(conn, tmp_path / "off", 1)
    assert dispatch.build_job(conn, settings, tmp_path, dispatch.claim_next_build(conn))
    disc = dispatch.disc_from_doc(jobs.get_job(conn, job_id)["discs"][0])
    assert "token_link" not in disc.label_fields and tokens.list_tokens(conn) == []
    assert "ONLINE" not in (disc.tree / "README.TXT").read_text(encoding="utf-8")
    subprocess.run(["/usr/bin/zbarimg", "--quiet", "--raw", str(disc.label_image)], capture_output=True, timeout=60)
    settings.update({"http.token_on_disc": "true"})
    job_id, _ = job_of(conn, tmp_path / "on", 1)
    assert dispatch.build_job(conn, settings, tmp_path, dispatch.claim_next_build(conn))
    disc = dispatch.disc_from_doc(jobs.get_job(conn, job_id)["discs"][0])
    link = disc.label_fields["token_link"]
    assert link.startswith("http://pacs.local:8080/token?") and zbar(disc.label_image) == [link]
