"""Offline work on the model: datasets, training, evaluation, export, and the ``fer-train`` CLI.

Nothing here is needed to serve or to run the edge; :mod:`shared_model` itself
holds only what edge and cloud must agree on.
"""
