"""degradation library (see docs/DESIGN.md §2)."""
