"""Pytest plugin shipped with eartalk (registered through the ``pytest11`` entry point).

It provides the conformance kit as fixtures and blocks network sockets in eartalk's own tests.
The kit itself lives in :mod:`eartalk.conditions.conformance`.
"""
