"""Training metrics to CSV (always), TensorBoard (when installed) and a loss-curve plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path


class MetricsLog:
    """Appends one row per logged step to `metrics.csv`; mirrors scalars to TensorBoard.

    The CSV header is fixed by the first row; later rows may not add columns (a resumed run
    appends to the same file).
    """

    def __init__(self, out_dir: Path, *, tensorboard: bool = True) -> None:
        self.path = out_dir / 'metrics.csv'
        self._columns: list[str] | None = None
        if self.path.is_file() and self.path.stat().st_size > 0:
            with self.path.open() as f:
                self._columns = next(csv.reader(f))
        self._writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional; the CSV holds everything
                SummaryWriter = None
            if SummaryWriter is not None:
                self._writer = SummaryWriter(str(out_dir / 'tensorboard'))

    def log(self, step: int, values: dict[str, float]) -> None:
        """Record `values` at `step`."""
        row = {'step': step, **values}
        if self._columns is None:
            self._columns = list(row)
            with self.path.open('w', newline='') as f:
                csv.writer(f).writerow(self._columns)
        with self.path.open('a', newline='') as f:
            csv.writer(f).writerow([row.get(c, '') for c in self._columns])
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: Path) -> dict[str, list[float]]:
    """Columns of a metrics CSV as float lists (empty cells become NaN)."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys() if rows else []
    return {c: [float(r[c]) if r[c] != '' else math.nan for r in rows] for c in columns}


def plot_curves(csv_path: Path, out_path: Path) -> Path | None:
    """Plot every loss column against step into a PNG; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    data = read_metrics(csv_path)
    if not data.get('step'):
        return None
    names = [c for c in data if c.startswith('loss')]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        axes[0 if name == 'loss' else 1].plot(data['step'], data[name], label=name)
    for ax, title in zip(axes, ('total loss', 'components (weighted, all layers)')):
        ax.set_xlabel('step')
        ax.set_title(title)
        ax.set_yscale('log')
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
