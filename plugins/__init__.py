"""Built-in plugins, registered through the same hooks as third-party plugins.

Condition plugins (one module each): ``audio``, ``voice_activity``, ``head_pose``, ``blink``,
``gaze``, ``expression``, ``emotion``. See docs/plugins.md for their columns and options.
"""

from __future__ import annotations

from eartalk.core.hookspecs import hookimpl


@hookimpl
def register_conditions() -> list[type]:
    from eartalk.plugins.audio import AudioCondition
    from eartalk.plugins.blink import Blink
    from eartalk.plugins.emotion import Emotion
    from eartalk.plugins.expression import Expression
    from eartalk.plugins.gaze import Gaze
    from eartalk.plugins.head_pose import HeadPose
    from eartalk.plugins.voice_activity import VoiceActivity

    return [AudioCondition, VoiceActivity, HeadPose, Blink, Gaze, Expression, Emotion]
