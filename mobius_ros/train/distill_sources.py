"""Unlabelled image sources of `mobius distill`: a folder, a COCO JSON's images, a rosbag2 topic.

Each source yields `SourceImage`s: an RGB image, or the reason it could not be read (counted and
skipped by the caller, never fatal). A source with nothing in it is an error before any work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobius_ros.common.images import IMAGE_SUFFIXES, image_files


class SourceError(ValueError):
    """A source that cannot deliver any image as asked; the message is user-facing."""


@dataclass(frozen=True)
class SourceImage:
    """One image of a source.

    Attributes:
        name: where it came from (a file path or `bag:topic@time`).
        rgb: [H, W, 3] uint8, or None when unreadable.
        error: why it is unreadable ('' when it is fine).
    """

    name: str
    rgb: np.ndarray | None
    error: str = ''


@dataclass(frozen=True)
class ImageSource:
    """A planned pass over images: how many there are (for the progress bar) and the images."""

    description: str
    count: int
    kind: str
    location: Path
    files: tuple[Path, ...] = ()
    topic: str = ''
    every: int = 1

    def __iter__(self) -> Iterator[SourceImage]:
        if self.kind == 'bag':
            from mobius_ros.ros.bag import BagError, read_images

            try:
                for timestamp, rgb, error in read_images(
                    self.location, self.topic, every=self.every
                ):
                    yield SourceImage(f'{self.location}:{self.topic}@{timestamp}', rgb, error)
            except BagError as error:
                raise SourceError(str(error)) from error
            return
        for path in self.files:
            yield read_image_file(path)


def read_image_file(path: Path) -> SourceImage:
    """An image file as RGB, or the reason it cannot be decoded."""
    import cv2

    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError as error:
        return SourceImage(str(path), None, f'cannot read: {error}')
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        return SourceImage(str(path), None, 'not a decodable image')
    return SourceImage(str(path), np.ascontiguousarray(bgr[..., ::-1]))


def folder_source(folder: str | Path) -> ImageSource:
    """Every image file under `folder` (recursively, sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f'--images {folder} is not a folder')
    files = tuple(image_files(folder))
    if not files:
        raise SourceError(f'no image files ({", ".join(IMAGE_SUFFIXES)}) under {folder}')
    return ImageSource(f'{len(files)} images under {folder}', len(files), 'files', folder, files)


def coco_source(annotations: str | Path, images: str | Path | None = None) -> ImageSource:
    """The images a COCO JSON lists (its annotations are not read).

    `images` is the image folder; by default the JSON's folder, then its `../images`.
    """
    annotations = Path(annotations)
    try:
        data = json.loads(annotations.read_text())
    except (OSError, ValueError) as error:
        raise SourceError(f'--coco {annotations}: not a readable JSON file ({error})') from error
    entries = data.get('images') if isinstance(data, dict) else None
    if not entries:
        raise SourceError(f'--coco {annotations} lists no images')
    root = Path(images) if images is not None else annotations.parent
    files = tuple(root / str(e['file_name']) for e in entries if 'file_name' in e)
    if not files:
        raise SourceError(f'--coco {annotations}: its images have no file_name')
    return ImageSource(
        f'{len(files)} images of {annotations.name}', len(files), 'files', root, files
    )


def bag_source(bag: str | Path, topic: str, *, every: int = 1) -> ImageSource:
    """Every `every`-th frame of an image topic of a rosbag2 recording (mcap or sqlite3)."""
    from mobius_ros.ros.bag import BagError, bag_frame_count, read_images

    bag = Path(bag)
    if not bag.exists():
        raise SourceError(f'--bag {bag} does not exist')
    if every < 1:
        raise SourceError(f'--every must be >= 1, got {every}')
    try:
        next(read_images(bag, topic, every=every), None)  # the topic check, before any work
        total = bag_frame_count(bag, topic)
    except BagError as error:
        raise SourceError(str(error)) from error
    if total == 0:
        raise SourceError(f'topic {topic!r} of {bag} has no messages')
    count = (total + every - 1) // every
    return ImageSource(
        f'{count} of {total} frames of {topic} in {bag}',
        count,
        'bag',
        bag,
        topic=topic,
        every=every,
    )
