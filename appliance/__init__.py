"""BurnStation appliance core: settings, storage and index, DICOM and HL7 services, the burn
pipeline, discovery, supervisor, front panel and the command line."""
