"""Condition stacks: plugins composed into FCIC slots, null dropout and control timelines."""

from eartalk.conditions.stack import ConditionSpec, ConditionStack, DropoutSpec, SlotSpan
from eartalk.conditions.timeline import ControlTimeline

__all__ = ["ConditionSpec", "ConditionStack", "ControlTimeline", "DropoutSpec", "SlotSpan"]
