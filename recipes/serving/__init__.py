"""``eartalk serve``: a live talking head streamed to a browser (or any client) over WebSocket.

* :mod:`~eartalk.recipes.serving.wire` -- the protocol's message kinds and binary layouts
  (docs/serving.md is the full description);
* :mod:`~eartalk.recipes.serving.server` -- the aiohttp server: one streaming session per
  WebSocket, generated in its own thread, a cap on sessions, bounded queues, limits, token;
* :mod:`~eartalk.recipes.serving.client` -- a Python client (used by the tests and by
  ``eartalk bench serve``);
* ``static/`` -- the page (plain HTML + JS, no build step) the server serves at ``/``.
"""

from __future__ import annotations

from eartalk.recipes.serving.wire import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
