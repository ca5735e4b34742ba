"""The autoregressive engine: frame VAE, SFA backbone, MAR decoder, model, streaming session, presets.

May import the foundation (``eartalk.core`` top level) and ``eartalk.conditions``; never data, media,
recipes or the CLI root, so that the model can be embedded without the tools around it.
"""
