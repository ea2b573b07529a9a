"""Primera Bravo driver: PTBurn job files (.JRQ), status files and .PTM commands.

Importing it registers the publisher factory as "primera" (appliance.publish.PUBLISHER_FACTORIES).
"""

from appliance import publish
from drivers.primera.publisher import PrimeraPublisher, factory

publish.register("primera", factory)

__all__ = ["PrimeraPublisher", "factory"]
