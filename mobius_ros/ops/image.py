"""Image normalisation constants and letterboxing (numpy/OpenCV only, no torch)."""

from __future__ import annotations

import numpy as np

# DESIGN §4.2: RGB on 0..255.
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)
