"""The experiments built on the library: the grid of Tables 2-4, the decisions on validation, the
pre-trained trunk of the CPU proxy, and the analysis of their records (``results/``).

Nothing in :mod:`canlib` below this package imports it (see ``ARCHITECTURE.md``).
"""
