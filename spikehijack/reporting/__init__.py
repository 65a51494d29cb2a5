"""Reporting: statistics with intervals, the claims registry (verdicts), figures, and the regeneration contract
of stored results."""
