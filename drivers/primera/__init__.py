"""Primera Bravo driver: PTBurn job files (.JRQ), status files and .PTM commands."""
