"""Stage 0 data: recipes read any preference format into the canonical pair table, split by prompt."""
