"""Developer scripts (not installed with the package)."""
