"""What the session export fixture (conftest.py) hands to the tests; a uniquely named module
so that tests can import it without clashing with the other `conftest` modules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CANVAS = (64, 96)  # H, W: non-square on purpose, multiples of 32


@dataclass
class Exported:
    """A tiny random-init MOBIUS (`model`, a Mobius) and the folder it was exported to."""

    model: object
    directory: Path
