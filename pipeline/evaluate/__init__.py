"""Evaluation: the paper's tables on seen groups, leave-group-out for new users, figures."""
