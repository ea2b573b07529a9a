"""The station's long-running services (one per supervised process)."""
