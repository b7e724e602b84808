"""The display's and the sound's byte streams: RFB framing and the client-message
gate, and QEMU's VNC audio messages. Pure parsing; imports nothing of the portal.
"""
