"""Synchronous directory mirroring (FUSE interception, framed block channel,
dirty bitmaps, reintegration). Imports nothing from hacluster/ or raft/; its
durable_file (durable writes) is the one module the other packages import."""
