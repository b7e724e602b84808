"""One machine on this host: the launcher and the warm pool, QEMU's argv and
process, overlays, start states, the visitor's sandbox and FAT disks, saved visits
(their file and their disks), keys, the printer port and its jobs' PDFs, the
recorder's process and recordings' sound and video (ffmpeg), confinement, and the
host's facts (identity, accelerator, capacity, leases).

Imports display at most; knows nothing of visits' rows, the node or the web.
"""
