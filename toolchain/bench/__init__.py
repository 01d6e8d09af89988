"""TEMPORARY shim until the bench system lands (merge)."""
