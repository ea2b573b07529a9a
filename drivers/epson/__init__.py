"""Epson Discproducer driver: TD Bridge job files (.JDF) and TDBStatus.txt.

Importing it registers the publisher factory as "epson" (appliance.publish.PUBLISHER_FACTORIES).
"""

from appliance import publish
from drivers.epson.publisher import EpsonPublisher

publish.register("epson", EpsonPublisher)

__all__ = ["EpsonPublisher"]
