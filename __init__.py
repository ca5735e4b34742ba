"""eartalk: streaming, controllable, audio-driven talking-head generation.

The package root is deliberately light: importing ``eartalk`` does not import torch.
Subpackages: :mod:`eartalk.core` (engine, plugin system, config, CLI),
:mod:`eartalk.conditions` (condition stacks and control timelines),
:mod:`eartalk.plugins` (built-in condition plugins), :mod:`eartalk.metrics`
and :mod:`eartalk.recipes` (Lightning training and evaluation entry points).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
