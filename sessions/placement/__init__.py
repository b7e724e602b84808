"""What is global to every node, in the database: the scheduler (the one waiting
line, limits, placement), the nodes' registry and heartbeats, and watch links.
Synchronous; runs in Django's database thread.

Imports machines (the host's identity) at most; never the node or the web edge.
"""
