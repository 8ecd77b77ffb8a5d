"""What a config check finds: one :class:`Problem` per finding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong (error) or doubtful (warning) in a config file.

    ``str(problem)`` is one line that names everything needed to find and fix
    it, e.g. ``error: config/models.yaml: models.standard (id qwen/qwen3-4b):
    field 'contex_length': unknown field; did you mean 'context_length'?``.
    """

    severity: Severity
    file: Path
    role: str | None  # the entry's role name under `models:`, None for file-level problems
    entry_id: str | None  # the entry's `id`, when known
    field: str | None
    message: str

    def __str__(self) -> str:
        where = [str(self.file)]
        if self.role is not None:
            entry = f"models.{self.role}"
            if self.entry_id:
                entry += f" (id {self.entry_id})"
            where.append(entry)
        if self.field:
            where.append(f"field '{self.field}'")
        return f"{self.severity}: {': '.join(where)}: {self.message}"


class ConfigError(Exception):
    """The file cannot be used at all (unreadable, not YAML, or schema errors)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems
