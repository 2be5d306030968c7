"""Name, dtype and shape of one graph tensor: what graphs declare and runners check."""

from __future__ import annotations

from dataclasses import dataclass

# A dimension is a fixed size, or a symbolic name (dynamic axis, e.g. 'Q'), or None (unnamed).
Dim = int | str | None


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one graph input or output.

    Attributes:
        name: the tensor's name in the graph.
        dtype: numpy dtype name ('float32', 'int64', 'bool', ...).
        shape: one entry per axis: an int for a fixed size, a string or None for a dynamic axis.
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        dims = ', '.join('?' if d is None else str(d) for d in self.shape)
        return f'{self.dtype} [{dims}]'
