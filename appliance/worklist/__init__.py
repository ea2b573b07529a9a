"""The Modality Worklist: HL7 orders and `.wl` files → worklist items → MWL C-FIND answers.

`mapping` turns an order into a worklist item, `items` keeps items in state.db, `wlfiles`
reads the `.wl` file folder, `matching` implements PS3.4 Annex K matching, `scp` answers
C-FIND on the DICOM ports, and `link` marks items done when their images arrive.
"""
