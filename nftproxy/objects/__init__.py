"""Objects in: Kubernetes API objects parsed into plain immutable data."""
