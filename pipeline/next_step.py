"""What a person can run next, as data: a message names a step and its options, the CLI says how
it is typed (a Make target, `python -m pipeline ...` or the installed `photo-pipeline ...`).

Lower layers write `f"run `{NextStep('submit', {'variant': name})}`"`; the text comes from the
renderer the CLI installs with `render_with` (until then, the `python -m pipeline` form).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class NextStep:
    """A CLI command and its options: {"variant": "telea", "resume": True, "max_steps": 3}.

    An option set to True is a flag (--resume); None or False leaves it out.
    """

    command: str
    options: dict[str, Any] = field(default_factory=dict)

    def argv(self) -> list[str]:
        """["train", "--variant", "telea", "--resume"]: the command's arguments, in order."""
        words = [self.command]
        for key, value in self.options.items():
            if value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            words += [flag] if value is True else [flag, str(value)]
        return words

    def command_line(self) -> str:
        """The arguments as one would type them (placeholders such as <file> left unquoted)."""
        return " ".join(shell_word(word) for word in self.argv())

    def __str__(self) -> str:
        return _renderer(self)


def variant_word(variant) -> str:
    """How --variant names a VariantConfig: its name when it is configs/<name>.yaml (the only
    place a bare name is looked up), else the path of its YAML file."""
    from pipeline.config import CONFIG_DIR

    source = variant.source
    if source is None or Path(source).resolve() == (CONFIG_DIR / f"{variant.name}.yaml").resolve():
        return variant.name
    return str(source)


def shell_word(word: str) -> str:
    return word if re.fullmatch(r"[\w@%+=:,./<>-]+", word) else shlex.quote(word)


def _plain(step: NextStep) -> str:
    return f"python -m pipeline {step.command_line()}"


_renderer: Callable[[NextStep], str] = _plain


def render_with(renderer: Callable[[NextStep], str] | None) -> None:
    """Make every NextStep read as `renderer` writes it (None: back to the default)."""
    global _renderer
    _renderer = renderer or _plain
