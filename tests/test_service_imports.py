"""Station processes that never read a DICOM file do not import pydicom at start.

Every test station (and every restart on the box) starts the hl7, burner, web and driver processes; pydicom
with numpy and gdcm costs about 0.35 s of CPU to import, most of a service's start-up. The modules
they share with the dicom process (index, worklist records) import pydicom where a dataset is read.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import REPO


@pytest.mark.parametrize("service", ["hl7", "burner", "web", "driver"])
def test_service_starts_without_pydicom(service):
    code = (f"import sys, appliance.cli, appliance.services.{service}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydicom', 'pynetdicom', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{service} imports {out.stdout.strip()[:300]}"
