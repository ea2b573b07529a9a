"""Primera Bravo driver: PTBurn job files (.JRQ), status files and .PTM commands.

Importing it registers the publisher factory as "primera" (appliance.publish.PUBLISHER_FACTORIES).
"""

from appliance import publish
from drivers.primera.publisher import PrimeraPublisher

publish.register("primera", PrimeraPublisher)

__all__ = ["PrimeraPublisher"]
