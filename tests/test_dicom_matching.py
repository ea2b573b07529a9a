"""The one set of DICOM matching rules, shared by C-FIND over the index and the worklist."""

from __future__ import annotations

import pytest

from appliance.dicom import matching, query
from appliance.worklist import matching as worklist_matching


def test_one_query_error_for_both_services():
    assert query.QueryError is matching.QueryError is worklist_matching.QueryError


@pytest.mark.parametrize(("text", "low", "high"), [
    ("10", "100000.000000", "105959.999999"),
    ("1030", "103000.000000", "103059.999999"),
    ("10:30:15", "103015.000000", "103015.999999"),
    ("103015.5", "103015.500000", "103015.599999"),
    ("103015.1234567", "103015.123456", "103015.123456"),
])
def test_time_normalisation_is_the_same_strict_or_lenient(text, low, high):
    for strict in (True, False):
        assert matching.norm_time(text, strict=strict) == low
        assert matching.norm_time(text, upper=True, strict=strict) == high
    assert matching.time_bounds(text) == (low, high)
    assert query._sql_time(text) == low  # what C-FIND's SQL compares an entity's time as


def test_malformed_keys_are_query_errors_only_where_strict():
    for bad in ("1", "10a0", "10.x"):
        with pytest.raises(matching.QueryError, match="not a time"):
            matching.norm_time(bad)
        assert matching.entity_time(bad) == ""  # an entity's bad time matches no range
        matching.norm_time(bad, strict=False)  # inside SQLite: never raises
    with pytest.raises(matching.QueryError, match="not a range"):
        matching.split_range("20240101-20240102-20240103")
    with pytest.raises(matching.QueryError, match="not a date"):
        matching.date_bounds("2024-01")


def test_ranges_lists_and_wildcards():
    assert matching.split_range(" 20240101 - ") == ("20240101", "")
    assert matching.date_bounds("2024.01.05") == ("20240105", "20240105")
    assert matching.in_bounds("20240105", "20240101", "") and not matching.in_bounds("", "", "")
    assert matching.norm_datetime("20240105", upper=True) == "20240105235959.999999"
    assert matching.norm_datetime("202401051030+0100") == "20240105103000.000000"
    assert matching.uid_list("1.2\\ 1.3 \\\\") == ["1.2", "1.3"]
    assert matching.split_values("CT\\ MR", "CS") == ["CT", "MR"] and matching.split_values("a\\b", "LT") == ["a\\b"]
    assert matching.wildcard("M?LLER*").fullmatch("MULLER^HANS")
    assert not matching.wildcard("m?ller*").fullmatch("MÜLLER")
    assert matching.wildcard("m?ller*", fold=True).fullmatch("MÜLLER")
    assert not matching.wildcard("A*").fullmatch("BA")
