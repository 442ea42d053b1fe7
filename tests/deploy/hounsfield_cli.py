"""Whether a container's command line is one the ``hounsfield`` CLI has: the images, the compose file
and the Helm chart all run it."""

from __future__ import annotations

from typing import Any

import typer.main

from hounsfield.cli import app


def check_cli(words: list[str]) -> None:
    """Fail unless ``hounsfield WORDS`` names a real (sub)command and only options it has."""
    command: Any = typer.main.get_command(app)  # typer's own (vendored) click: groups have .commands
    rest = list(words)
    while hasattr(command, "commands"):
        assert rest, f"{words}: `hounsfield` needs a subcommand here"
        name = rest.pop(0)
        assert name in command.commands, f"{words}: no `{name}` command; there are {sorted(command.commands)}"
        command = command.commands[name]
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in rest:
        if word.startswith("-"):
            assert word.split("=", 1)[0] in options, f"{words}: {word} is no option of it; it has {sorted(options)}"
