"""The shared core: a run's features (Run), a fitted model bundle (Model), the parallel runner."""
