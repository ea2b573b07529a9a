"""Event handlers bound to the SCP, one module per DIMSE service."""
