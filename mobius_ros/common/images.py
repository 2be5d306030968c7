"""Image files in a folder: the one listing every command that takes `--images DIR` uses."""

from __future__ import annotations

from pathlib import Path

# What OpenCV's imread decodes in every build we ship on.
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def image_files(folder: str | Path) -> list[Path]:
    """Every file under `folder` (recursively, sorted) whose suffix is an image's; an empty
    list when there is none (the caller words the error for its own flag)."""
    return sorted(
        p for p in Path(folder).rglob('*') if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
