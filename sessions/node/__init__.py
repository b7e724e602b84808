"""This node: its broker (the one owner of its machines and visits), the keeper
(each visit's life: viewers, time limits, grace, reset, the sandbox's calls),
the visit's state type, each visit's prints and recordings, the reaper, metrics, and the node's settings.

Imports placement, machines and display; never the web edge above it.
"""
