"""Robot drivers: each vendor's job-file protocol behind the `appliance.publish.Publisher` interface."""

import importlib

DRIVER_PACKAGES = ("drivers.epson", "drivers.primera")


def register_all() -> list[str]:
    """Import every driver package (each registers its publisher factory); returns the kinds registered."""
    from appliance import publish

    for name in DRIVER_PACKAGES:
        importlib.import_module(name)
    return sorted(publish.PUBLISHER_FACTORIES)
