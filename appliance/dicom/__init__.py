"""DICOM services: the SCP (echo, store, find, move, get) and the SCU (echo, send, retrieve)."""
