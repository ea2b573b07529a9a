"""Front panel: a 20x4 character LCD on a serial line showing address, AE title, state and job.

`protocol` speaks the Matrix Orbital command set, `screen` decides what the four lines say,
`usb` holds the USB ids that identify such a display; the process is `appliance.services.panel`.
"""
