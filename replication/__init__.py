"""Synchronous directory mirroring (FUSE interception, framed block channel,
dirty bitmaps, reintegration). Imports nothing from hacluster/ or raft/."""
