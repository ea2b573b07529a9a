"""A short smoke run of each kind of fuzzing (`make fuzz` runs them for minutes, tests/fuzz/run.py).

- in process: every target of tests/fuzz/targets.py on its seeds, every kept crash reproducer and
  a slice of the kept corpus (what atheris found interesting), so a change that breaks a
  parser on an input the fuzzer once found fails here;
- black box: a live station gets a few Hypothesis examples of every client of tests/fuzz/blackbox.py,
  then every kept black-box reproducer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import Station

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))
import blackbox  # noqa: E402
import targets  # noqa: E402

CORPUS_SLICE = 60  # files per target from the kept corpus (the newest names sort last: a stable slice)


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_in_process_target_holds(target):
    fn = targets.TARGETS[target]
    inputs = [(f"seed {i}", seed) for i, seed in enumerate(targets.seeds(target))]
    crashes = sorted((FUZZ / "crashes" / target).glob("crash-*"))
    corpus = sorted((FUZZ / "corpus" / target).glob("*"))[:CORPUS_SLICE]
    inputs += [(str(p.relative_to(FUZZ)), p.read_bytes()) for p in crashes + corpus if p.is_file()]
    for name, data in inputs:
        try:
            fn(data)
        except Exception as exc:
            raise AssertionError(f"{target}: {name} fails: {exc!r}") from exc


def test_cursor_replays_the_same_values():
    """The structured targets cut their input with Cursor: the same bytes give the same values (a kept
    reproducer replays what the fuzzer ran)."""
    data = b"\x05abc\xffdef\xff\x07rest"
    first, second = targets.Cursor(data), targets.Cursor(data)
    for cur in (first, second):
        assert cur.byte() == 5 and cur.chunk() == b"abc" and cur.chunk() == b"def"
        assert cur.pick(["a", "b", "c"]) == "b" and cur.rest() == b"rest" and cur.byte() == 0


@pytest.mark.station
def test_black_box_clients_on_a_live_station(tmp_path, monkeypatch):
    monkeypatch.setenv("BURNSTATION_TEST_SCRYPT_N", "1024")
    with Station(tmp_path / "data") as station:
        live = blackbox.Live(station)
        for target in blackbox.TARGETS:
            result = blackbox.fuzz(live, target, seconds=0, batch=4, max_examples=4, keep=False)
            assert result["examples"] >= 4, result
            assert not result["failures"], result
        for path in sorted((FUZZ / "crashes").glob("*/*.json")):
            blackbox.replay(live, path)
        assert live.up()
        # the examples reached the protocols' answers, not only closed connections
        assert "PDU 0x2" in live.answers and any(k.startswith("ACK") for k in live.answers), live.answers
        assert any(k.startswith("HTTP") for k in live.answers), live.answers
