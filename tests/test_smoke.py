"""The station starts from the CLI and answers C-ECHO on every title it owns."""

from support import dcmtk


def test_echo_every_derived_title(station):
    for suffix in ("", "_E", "_P", "_TE", "_TP"):
        result = dcmtk("echoscu", "-aec", f"BURNSTATION{suffix}", "127.0.0.1", str(station.port))
        assert result.returncode == 0, result.stderr


def test_unknown_called_title_rejected(station):
    result = dcmtk("echoscu", "-aec", "SOMEONE_ELSE", "127.0.0.1", str(station.port))
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stderr + result.stdout
