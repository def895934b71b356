"""The public tracking edge: beacon validation, the visitor cookie and the Redis event log.

The tracker knows nothing of contacts; the stitcher package builds on it, never the reverse.
"""
