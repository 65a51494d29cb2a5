"""One module per notebook: the experiment functions of that chapter of the executable paper.

``chNN_*`` is imported by ``notebooks/NN_*.ipynb``; the maths it uses lives in ``spikehijack.core``.
"""
