"""The plugin's own tests: eartalk's conformance kit run against Brightness."""

import torch
from eartalk_brightness import Brightness

from eartalk.conditions.conformance import ConditionPluginConformance
from eartalk.core.types import Sample


class TestBrightness(ConditionPluginConformance):
    plugin_class = Brightness
    registered = True  # installed through the entry point

    def make_sample(self) -> Sample:
        frames = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
        return Sample(frames=frames)
