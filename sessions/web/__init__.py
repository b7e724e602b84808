"""The web edge: the HTTP API and pages, the staff's tools, and the WebSocket
consumers (display, sound, events, watch). Thin: validate, one call to the node
below, respond; domain errors are translated here, once, into HTTP statuses and
close codes.

Imports the node, placement, machines and display layers; none of them imports it.
"""
