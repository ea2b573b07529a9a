"""PS3.4 Annex K / C.2.2.2 matching rules, checked directly on records (fast, no network).

The end-to-end behaviour against dcmtk is in test_worklist_wlmscpfs.py; these pin down the
rules the example worklist does not exercise (combined date-time bounds, partial times,
sequence item selection, multi-valued entities, malformed ranges).
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from appliance.worklist import record as rec
from appliance.worklist.matching import QueryError, compile_query, respond


def item(aet: str = "CT01", date: str = "20261126", time: str = "143000", name: str = "DOE^JOHN",
         modality: str = "CT", steps: int = 1) -> rec.Record:
    ds = Dataset()
    ds.PatientName = name
    ds.PatientID = "P1"
    ds.AccessionNumber = "A1"
    sps = []
    for i in range(steps):
        step = Dataset()
        step.ScheduledStationAETitle = aet
        step.ScheduledProcedureStepStartDate = date
        step.ScheduledProcedureStepStartTime = time
        step.Modality = modality if i == 0 else "MR"
        step.ScheduledProcedureStepID = f"S{i}"
        sps.append(step)
    ds.ScheduledProcedureStepSequence = sps
    return rec.from_dataset(ds)


def query(**sps: str) -> Dataset:
    ds = Dataset()
    top = {k: v for k, v in sps.items() if not k.startswith("sps_")}
    for key, value in top.items():
        setattr(ds, key, value)
    step = Dataset()
    for key, value in sps.items():
        if key.startswith("sps_"):
            setattr(step, key[4:], value)
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def matches(q: Dataset, r: rec.Record) -> bool:
    return compile_query(q).matches(r)


def test_combined_date_time_range():
    q = query(sps_ScheduledProcedureStepStartDate="20261125-20261126", sps_ScheduledProcedureStepStartTime="2200-1000")
    assert matches(q, item(date="20261125", time="230000"))
    assert matches(q, item(date="20261126", time="0930"))
    assert not matches(q, item(date="20261126", time="143000"))  # after 10:00 on the last day
    assert not matches(q, item(date="20261125", time="213000"))  # before 22:00 on the first day


def test_time_range_upper_bound_covers_the_whole_minute_and_hour():
    assert matches(query(sps_ScheduledProcedureStepStartTime="-14"), item(time="145959"))
    assert matches(query(sps_ScheduledProcedureStepStartTime="1400-1430"), item(time="143059.5"))
    assert not matches(query(sps_ScheduledProcedureStepStartTime="1400-1429"), item(time="143000"))


def test_open_date_ranges_and_single_date():
    assert matches(query(sps_ScheduledProcedureStepStartDate="20261126-"), item(date="20261130"))
    assert not matches(query(sps_ScheduledProcedureStepStartDate="-20261125"), item(date="20261126"))
    assert matches(query(sps_ScheduledProcedureStepStartDate="20261126"), item(date="20261126"))


def test_multi_valued_entity_and_query():
    assert matches(query(sps_ScheduledStationAETitle="CT02"), item(aet="CT01\\CT02"))
    assert matches(query(sps_Modality="MR\\CT"), item(modality="CT"))
    assert not matches(query(sps_Modality="MR\\US"), item(modality="CT"))


def test_wildcards_and_universal():
    assert matches(query(PatientName="D?E^*"), item())
    assert not matches(query(PatientName="doe*"), item())  # PN matching is case-sensitive here
    assert matches(query(PatientName="*"), item(name=""))  # "*" is universal, even for an empty value
    assert matches(query(PatientName=""), item())


def test_sequence_matching_returns_only_matching_items():
    r = item(steps=2)  # step 0 is CT, step 1 is MR
    q = query(sps_Modality="MR", sps_ScheduledProcedureStepID="")
    compiled = compile_query(q)
    assert compiled.matches(r)
    out = rec.to_dataset(respond(compiled, r))
    assert [s.ScheduledProcedureStepID for s in out.ScheduledProcedureStepSequence] == ["S1"]


def test_requested_keys_only_and_missing_ones_empty():
    q = query(PatientName="", sps_Modality="")
    q.ReasonForTheRequestedProcedure = ""
    out = rec.to_dataset(respond(compile_query(q), item()))
    assert "PatientID" not in out  # not requested
    assert out.ReasonForTheRequestedProcedure in (None, "")
    assert set(out.ScheduledProcedureStepSequence[0].keys()) == {0x00080060}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("bad", ["2026-11-26-", "2026112", "abc-def"])
def test_malformed_date_range_is_an_error(bad):
    with pytest.raises(QueryError):
        compile_query(query(sps_ScheduledProcedureStepStartDate=bad))
