"""DICOM services: the SCP (echo, store, find, move, get) and the SCU (echo, send, retrieve)."""

from pydicom import config as _pydicom_config

# Data sets come from scanners as they are: read them without value validation (it costs time
# and only warns); what the station writes itself is built correctly.
_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE
