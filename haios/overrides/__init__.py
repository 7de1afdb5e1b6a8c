"""Signed overrides (SPEC §5): supervisors' SSH keys, signatures and the k-of-n policy."""
