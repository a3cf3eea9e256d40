"""Stage 1: fit the mixture heads and gate on a run's cached features (K selection included)."""
