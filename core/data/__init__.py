"""Datasets and data tools: the sharded dataset format and DataModule, ``prepare``, ``synth`` and their commands.

May import the foundation, ``eartalk.conditions`` and ``eartalk.core.media``; never the engine or recipes.
"""
