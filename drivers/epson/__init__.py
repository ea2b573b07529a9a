"""Epson Discproducer driver: TD Bridge job files (.JDF) and TDBStatus.txt."""
