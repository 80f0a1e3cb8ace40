"""`Attempt`: what one attempt of an agent task consumed and said, as its runner records it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...core.state import Usage


@dataclass
class Attempt:
    """What one attempt of an agent task consumed and said; filled in by the runner even when the attempt fails."""

    model: str | None = None
    usage: Usage | None = None
    transcript: list[dict[str, Any]] | None = None
