"""The drivers against the hardware simulator (its own process), which holds them to the vendors'
manuals (shared/reference/robots.md): priority, an operator's cancel, the abort command, the code
page, the label design, the status values. The publishers are used directly, without a station."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_sim_support import Sim, make_iso, make_tree, wait_for

from appliance import publish
from drivers.epson.publisher import EpsonPublisher
from drivers.primera.publisher import PrimeraPublisher


@pytest.fixture
def sim(tmp_path):
    with Sim(tmp_path, robots="epson,primera:bravo") as s:
        yield s


def disc(tmp_path: Path, name: str = "DOE^JOHN", tag: str = "d") -> publish.DiscImage:
    image = make_iso(tmp_path / f"{tag}.iso")
    tree = make_tree(tmp_path / f"tree-{tag}")
    return publish.DiscImage(image=image, tree=tree, media="CD", filesystem="ISO9660+JOLIET", volume_label="VOL",
                             size=image.stat().st_size, label_fields={"patient_name": name, "patient_id": "P42"})


def epson(sim: Sim, tmp_path: Path, **kw: object) -> EpsonPublisher:
    return EpsonPublisher({"name": "epson", "spool": str(sim.spool / "epson"), **kw}, tmp_path / "data-e")


def primera(sim: Sim, tmp_path: Path, **kw: object) -> PrimeraPublisher:
    return PrimeraPublisher({"name": "bravo", "spool": str(sim.spool / "bravo"), **kw}, tmp_path / "data-p")


def state_of(pub: publish.Publisher, job_id: str, *states: str) -> publish.JobProgress:
    return wait_for(lambda: (p := pub.poll(job_id)).state in states and p, what=f"{job_id} {states}")


def test_primera_high_priority_goes_first(sim, tmp_path):
    """Importance 0 is the most important: the station's high-priority job overtakes a normal one."""
    pub = primera(sim, tmp_path)
    sim.ctl("bravo", "fault", "input_empty", "on")
    pub.submit(publish.PublishRequest(job_id="BLOCK", discs=[disc(tmp_path, tag="b")]))
    sim.wait_ext(sim.spool / "bravo", "BLOCK", "INP")
    pub.submit(publish.PublishRequest(job_id="NORMAL", discs=[disc(tmp_path, tag="n")]))
    sim.wait_ext(sim.spool / "bravo", "NORMAL", "QRJ")
    pub.submit(publish.PublishRequest(job_id="URGENT", discs=[disc(tmp_path, tag="u")], priority=1))
    sim.wait_ext(sim.spool / "bravo", "URGENT", "QRJ")
    sim.ctl("bravo", "refill", "2")  # discs for BLOCK and one more job
    state_of(pub, "URGENT", publish.DONE)
    assert pub.poll("NORMAL").state in (publish.WAITING, publish.BURNING)


def test_epson_cancel_at_the_robot_is_not_done(sim, tmp_path):
    """The operator cancels at the robot: TD Bridge ends the job as .DON with STATUS 4 and no disc."""
    pub = epson(sim, tmp_path)
    sim.ctl("epson", "fault", "input_empty", "on")
    pub.submit(publish.PublishRequest(job_id="OPC", discs=[disc(tmp_path)], copies=2))
    sim.wait_ext(sim.spool / "epson", "OPC", "INP")
    sim.ctl("epson", "cancel", "OPC")
    sim.wait_ext(sim.spool / "epson", "OPC", "DON")
    p = state_of(pub, "OPC", publish.CANCELLED, publish.DONE)
    assert p.state == publish.CANCELLED and "no disc made" in p.message and p.discs_done == 0


def test_primera_abort_by_file_name_and_client(sim, tmp_path):
    """The abort .PTM carries the JRQ's name and our ClientID; another client's abort is refused."""
    pub = primera(sim, tmp_path)
    sim.ctl("bravo", "fault", "input_empty", "on")
    pub.submit(publish.PublishRequest(job_id="AB1", discs=[disc(tmp_path)]))
    sim.wait_ext(sim.spool / "bravo", "AB1", "INP")
    intruder = PrimeraPublisher({"name": "bravo", "spool": str(sim.spool / "bravo"), "client_id": "Other"},
                                tmp_path / "data-p")  # same ledger, another ClientID
    assert intruder.cancel("AB1")
    wait_for(lambda: not (sim.spool / "bravo" / "AB1.PTM").exists(), what="PTM consumed")
    sim.sync()
    assert (sim.spool / "bravo" / "AB1.INP").exists()  # refused: not the job's client
    assert pub.cancel("AB1")
    p = state_of(pub, "AB1", publish.CANCELLED, publish.FAILED)
    assert p.state == publish.CANCELLED


def test_code_page_and_label_designs(sim, tmp_path):
    """cp1252 for Epson keeps MÜLLER; ascii for Primera: a name in another script becomes the
    Patient ID in MergeField; the simulator decodes both strictly."""
    design_e = tmp_path / "burnstation.tdd"
    design_p = tmp_path / "burnstation.std"
    design_e.write_bytes(b"tdd stand-in")
    design_p.write_bytes(b"std stand-in")
    e = epson(sim, tmp_path, label_template=str(design_e))
    p = primera(sim, tmp_path, label_template=str(design_p))
    e.submit(publish.PublishRequest(job_id="ENC1", discs=[disc(tmp_path, "MÜLLER^HANS", "e")]))
    p.submit(publish.PublishRequest(job_id="ENC2", discs=[disc(tmp_path, "山田^太郎", "p")]))
    p.submit(publish.PublishRequest(job_id="ENC3", discs=[disc(tmp_path, "MÜLLER^HANS", "q")]))
    for pub, job_id in ((e, "ENC1"), (p, "ENC2"), (p, "ENC3")):
        assert state_of(pub, job_id, publish.DONE, publish.FAILED).state == publish.DONE, pub.poll(job_id)
    merge = (sim.root / "bin" / "epson" / "ENC1" / "label" / "ENC1_FIELDS.TXT").read_bytes().decode("cp1252")
    assert "patient_name=MÜLLER^HANS\r\n" in merge
    label = sim.root / "bin" / "bravo"
    assert (label / "ENC2" / "label" / "MergeFields.txt").read_text().splitlines()[:2] == ["P42", "P42"]
    assert (label / "ENC3" / "label" / "MergeFields.txt").read_text().splitlines()[0] == "MULLER^HANS"
    # without a design: Epson says the disc will be unprinted, the JDF has no LABEL
    plain = epson(sim, tmp_path / "plain")
    assert "no label design: disc will be unprinted" in plain.status().message


def test_epson_data_mode_disc_root(sim, tmp_path):
    """`DATA=<source>` alone for the disc root: the simulator refuses a TAB without a destination."""
    pub = epson(sim, tmp_path, mode="data")
    pub.submit(publish.PublishRequest(job_id="DR1", discs=[disc(tmp_path)]))
    assert state_of(pub, "DR1", publish.DONE, publish.FAILED).state == publish.DONE, pub.poll("DR1")
    assert (sim.root / "bin" / "epson" / "DR1" / "disc" / "DICOMDIR").is_file()


def test_primera_status_values_from_the_sdk(sim, tmp_path):
    """The simulator writes the SDK's SysErrorNumber codes; the driver names them."""
    pub = primera(sim, tmp_path)
    sim.ctl("bravo", "fault", "cover_open", "on")
    st = wait_for(lambda: (s := pub.status()) and "cover open too long" in s.message and s,
                  what="cover open (15)")
    assert "system error 15" in st.message
    sim.ctl("bravo", "fault", "cover_open", "off")
    sim.ctl("bravo", "fault", "ink_low", "on")
    st = wait_for(lambda: (s := pub.status()) and "both inks low" in s.message and s, what="ink low (7)")
    assert set(st.ink) == {"cartridge 0 (colour)", "cartridge 1 (black)"}
    assert st.drives and st.drives[0]["state_text"] == "idle"
