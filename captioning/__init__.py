"""captioning library (see docs/DESIGN.md §2)."""
