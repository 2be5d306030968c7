"""An evaluation-only scene renderer, independent of the training generator.

Its drawing (supersampled PIL polygons), colour shades, sizes, layout (Poisson-disc darts with
bounded occlusion and border truncation), backgrounds and expression templates are its own, so a
model trained on `mobius_ros.train.data.synthetic` can be measured on scenes it has never seen the
like of. Nothing here imports `mobius_ros.train`, and nothing there imports this package.
"""

from mobius_ros.evalrender.scene import COLOURS, SHAPES, Instance, Scene, render_scene

__all__ = ['COLOURS', 'SHAPES', 'Instance', 'Scene', 'render_scene']
