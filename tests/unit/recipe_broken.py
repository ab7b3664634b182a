"""A user module that fails while it is imported (for the recipe tests)."""

raise RuntimeError("boom while importing")
