"""Adapters for RLHF frameworks, each with its framework's exact call signature (README "Serving").

- TRL ``GRPOTrainer(reward_funcs=[...])``: :func:`pipeline.integrations.trl.reward_func` (in-process or HTTP) and
  :func:`pipeline.integrations.trl.async_reward_func` (HTTP, awaited concurrently by TRL).
- OpenRLHF ``--reward.remote_url``: the `micro serve` URL (``/get_reward``), or the file
  ``pipeline/integrations/openrlhf.py`` (its ``reward_func(queries, prompts, labels, **kwargs)``).
- verl ``custom_reward_function``: ``pipeline/integrations/verl.py``, ``compute_score`` (async).
"""
