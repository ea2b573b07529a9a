"""The supervisor: runs each station service as its own process and keeps it alive.

`states` names the process states and the legal moves between them (no dependencies),
`process` is one supervised child, `supervisor` is the loop that watches them all.
"""
