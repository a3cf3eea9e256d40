"""The math: Bradley-Terry mixture heads, gates, routers (numpy/torch, no file I/O)."""
