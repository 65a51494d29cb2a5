"""Core tensor maths: poolings, similarity blocks, scoring, injection, gradients and metrics.

Torch only: no pandas, no files. Every other layer builds on this one; it imports from none of them.
"""
