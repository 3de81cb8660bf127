"""Diff: what must change in the kernel when some owners' fragments change."""
