"""Helpers both vendor drivers share, because both speak "text job file in a watched folder".

One module per concern, all re-exported here (`from drivers.common import X` works for each):

- `values`: values written into job files come from untrusted data (patient names from scanners): `clean_value`
  makes any string one harmless value (no line break, tab, NUL or `=`), `checked_path` refuses a
  path that would need such a change (a mangled path is worse than a clear error);
- `files`: `write_aside_then_rename`: the engines pick up a job file the moment it appears, so it is written
  in a side folder, fsync'd, then moved in (never written in place);
- `ini`: `TolerantIni`: the engines rewrite their INI status files in place; a reader can catch one
  half-written, so a parse is checked and the last good one kept (never a crash);
- `paths`: `EnginePathMap`: the spool may be a share of the engine's (Windows) host, so local paths are
  rewritten to what the engine sees;
- `jobids`: robot job ids: a job of several discs, and a retry, need one robot job per disc and attempt;
  `robot_job_id` / `match_robot_job` name them so that `poll(job_id)` finds them from the files alone;
  `SubmittedLedger` tells our jobs from an engine's old ones of a repeated id; `aggregate` makes one
  job state of the discs' states; `ErrorReportWait` holds back an .ERR the engine has not explained;
- `spool`: `SpoolPublisher`: the job-following skeleton both publishers share (poll, plan, cancel, ledger,
  staging); a subclass is its own `PUBLISHER_FACTORIES` entry (see appliance/publish.py).
"""

from __future__ import annotations

from drivers.common.files import (
    ASIDE_DIR,
    STAGE_DIR,
    clean_aside,
    read_briefly,
    remove_quietly,
    stage_file,
    stage_tree,
    write_aside_then_rename,
)
from drivers.common.ini import (
    IniSnapshot,
    Sections,
    TolerantIni,
    as_int,
    half_written,
    listed_values,
    lost_sections,
    missing_listed_sections,
    parse_ini,
)
from drivers.common.jobids import (
    DiscState,
    ErrorReportWait,
    FoundJobFile,
    RobotJobRef,
    SubmittedLedger,
    aggregate,
    find_job_files,
    latest_per_disc,
    ledger_for,
    match_robot_job,
    robot_job_id,
)
from drivers.common.paths import EnginePathMap, is_windows_path
from drivers.common.spool import TERMINAL, SpoolPublisher, section_refs
from drivers.common.values import ID_RE, checked_id, checked_path, clean_key, clean_value, yes_no

__all__ = ["ID_RE", "clean_value", "clean_key", "checked_id", "checked_path", "yes_no", "ASIDE_DIR", "STAGE_DIR", "write_aside_then_rename", "clean_aside", "read_briefly", "stage_file", "stage_tree", "remove_quietly", "is_windows_path", "EnginePathMap", "Sections", "parse_ini", "as_int", "IniSnapshot", "TolerantIni", "listed_values", "missing_listed_sections", "lost_sections", "half_written", "robot_job_id", "RobotJobRef", "match_robot_job", "FoundJobFile", "find_job_files", "latest_per_disc", "DiscState", "aggregate", "SubmittedLedger", "ledger_for", "ErrorReportWait", "TERMINAL", "section_refs", "SpoolPublisher"]
