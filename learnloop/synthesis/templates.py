"""Versioned prompt templates, one folder per version under ``prompts/``.

A version (``v1``, ``v2``...) is a folder of Markdown files with ``string.Template``
placeholders (``$group``, ``$evidence``...). A prompt change is a new folder, never
an edit of an old one, so every memory item's ``prompt_version`` names the exact
text that produced it. Templates are checked when loaded: a missing file or an
unknown placeholder stops start-up instead of a synthesis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from string import Template
from typing import Final

from learnloop.errors import ConfigError

_VERSION_RE: Final = re.compile(r"^v\d{1,4}$")

# the placeholders each template may use; a template using another one is rejected
PLACEHOLDERS: Final[dict[str, frozenset[str]]] = {
    "system": frozenset(),
    "user": frozenset(
        {"group", "scope", "reason", "min_users", "max_rules", "boundary", "current", "evidence"}
    ),
    "repair": frozenset({"error"}),
    "judge_system": frozenset(),
    "judge_user": frozenset({"boundary", "interactions"}),
}


@dataclass(frozen=True, slots=True)
class PromptSet:
    """The templates of one prompt version."""

    version: str
    templates: dict[str, Template]

    def render(self, name: str, **values: object) -> str:
        """Fill template ``name``; every placeholder must be given (no silent blanks)."""
        return self.templates[name].substitute({k: str(v) for k, v in values.items()})


def available_versions() -> list[str]:
    """Prompt versions shipped with this package, oldest first."""
    root = resources.files("learnloop.synthesis").joinpath("prompts")
    found = [p.name for p in root.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
    return sorted(found, key=lambda v: int(v[1:]))


@lru_cache(maxsize=8)
def load_prompts(version: str) -> PromptSet:
    """The templates of ``version``; :class:`ConfigError` when absent or malformed."""
    if not _VERSION_RE.match(version):
        raise ConfigError(f"invalid prompt version {version!r}: expected v1, v2, ...")
    folder = resources.files("learnloop.synthesis").joinpath("prompts", version)
    templates: dict[str, Template] = {}
    for name, allowed in PLACEHOLDERS.items():
        path = folder.joinpath(f"{name}.md")
        if not path.is_file():
            known = ", ".join(available_versions()) or "none"
            raise ConfigError(
                f"prompt version {version!r} has no {name}.md (versions available: {known})"
            )
        template = Template(path.read_text(encoding="utf-8"))
        if not template.is_valid():
            raise ConfigError(f"prompt {version}/{name}.md has an invalid placeholder")
        used = set(template.get_identifiers())
        unknown = used - allowed
        if unknown:
            raise ConfigError(
                f"prompt {version}/{name}.md uses unknown placeholder(s): {sorted(unknown)}"
            )
        templates[name] = template
    return PromptSet(version, templates)
