"""The web server: technician UI and patient portal (bottle, served by cheroot)."""
