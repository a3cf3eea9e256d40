"""`micro serve`: rewards over HTTP (OpenRLHF /get_reward, /v1/rewards), micro-batched."""
