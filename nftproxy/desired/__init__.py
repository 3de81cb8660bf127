"""Desired rules: the nftables state this node must hold, computed from the model by pure functions."""
