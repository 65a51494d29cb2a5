"""Reporting: statistics with intervals, figures, and the regeneration contract of stored results."""
