"""Station processes that never read a DICOM file do not import pydicom at start.

Every test station (and every restart on the box) starts the hl7, burner, web and driver processes; pydicom
with numpy and gdcm costs about 0.35 s of CPU to import, most of a service's start-up. The modules
they share with the dicom process (index, worklist records) import pydicom where a dataset is read.
The transfer process imports its associations (pydicom, pynetdicom) when the first transfer or query
runs (transfer/loop.py). The web process also loads the web app (webui.app and the portal) when it opens its port: their pages
that show images, zips or C-FIND import pydicom, numpy, PIL and pynetdicom when they are served.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import REPO

# what each process imports before it serves (the web process: its app, when it opens the port)
AT_START = {"hl7": "", "burner": "", "web": ", webui.app, cheroot.wsgi, cheroot.ssl.builtin", "driver": "",
            "transfer": ""}


@pytest.mark.parametrize("service", sorted(AT_START))
def test_service_starts_without_pydicom(service):
    code = (f"import sys, appliance.cli, appliance.services.{service}{AT_START[service]}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydicom', 'pynetdicom', 'numpy', 'PIL')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{service} imports {out.stdout.strip()[:300]}"
