"""The supervisor: runs each process its plan lists as a child of its own and keeps it alive.

`states` names the process states and the legal moves between them (no dependencies),
`process` is one supervised child, `plan` says what a plan is (the station's own is
`appliance.services.plan`), `supervisor` is the loop that watches them all.
"""
