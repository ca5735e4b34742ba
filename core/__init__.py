"""The eartalk engine: plugin system, condition-token protocol, config, model and streaming."""
