"""Stages (prepare, embed, fit, route, eval) and data recipes."""
