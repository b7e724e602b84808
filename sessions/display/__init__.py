"""The display's and the sound's byte streams: RFB framing and the client-message
gate, QEMU's VNC audio messages, and a recording of the display (its RFB client
and its file). Pure parsing and sockets; imports nothing of the portal.
"""
