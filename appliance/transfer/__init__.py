"""The station as a DICOM client: transfers (retrieve, send), queries and forwarding rules.

Every outgoing association is opened by the `transfer` process (appliance.services.transfer),
which holds the station-wide cap `dicom.max_connections`; the CLI hands it requests via state.db.
"""
