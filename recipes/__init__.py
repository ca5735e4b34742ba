"""Built-in recipes (Lightning entry points) and their commands, registered through the hooks."""

from __future__ import annotations

from eartalk.core.hookspecs import hookimpl


@hookimpl
def register_recipes() -> list[type]:
    from eartalk.recipes.train import TrainRecipe
    from eartalk.recipes.vae import VAERecipe

    return [TrainRecipe, VAERecipe]


@hookimpl
def register_commands() -> list[type]:
    from eartalk.recipes.commands import COMMANDS
    from eartalk.recipes.encode import EncodeCommand
    from eartalk.recipes.own_face import OwnFaceCommand
    from eartalk.recipes.serving.commands import ServeCommand
    from eartalk.recipes.study import StudyCommand

    return [*COMMANDS, StudyCommand, ServeCommand, EncodeCommand, OwnFaceCommand]
