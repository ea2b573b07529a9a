"""Hardware simulator: plays the Epson TD Bridge and Primera PTBurn engines and their robots."""
