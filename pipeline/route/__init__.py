"""Stage 2: routing, per-user profiles and adaptation, scoring."""
