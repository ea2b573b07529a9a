"""HL7 v2 over MLLP: framing, decoding (MSH-18 before text), ACKs and the outbound status messages.

The worklist (appliance.worklist) decides what an order means; this package only moves and
checks messages, so that a bad frame or charset is answered here with a clear AE/AR.
"""
