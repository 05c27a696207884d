"""dataset library (see docs/DESIGN.md §2)."""
