"""The teacher phase of `mobius distill`: label every image of a source once, into the cache.

Each image is letterboxed (top-left, as training pads) into the fixed input canvas, the teacher
runs on batches of canvases, and per image its final-layer instances whose best phrase score
reaches `STORE_MIN_SCORE` are kept (overlapping duplicates removed by mask NMS), with every
phrase's score, the box and the mask, and optionally the mask features. Images already in the
cache are not run again, which is what makes an interrupted or repeated run cheap.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mobius_ros.ops.image import letterbox, normalize_image
from mobius_ros.ops.masks import mask_nms
from mobius_ros.train.distill_cache import (
    STORE_MIN_SCORE,
    TeacherCache,
    TeacherRecord,
    encode_masks,
    image_sha256,
)
from mobius_ros.train.distill_sources import SourceImage

# Teacher queries whose masks overlap this much are one object (keep the higher score).
NMS_IOU = 0.8


@dataclass
class LabelSummary:
    """What the teacher phase did.

    Attributes:
        hashes: image hashes of every usable image, in source order (repeats removed).
        labelled: images the teacher ran on in this call.
        cached: images whose record was already in the cache.
        skipped: unreadable images (with `errors`, one line each, the first 20 kept).
        instances: pseudo-instances stored in this call.
        seconds: wall time.
    """

    hashes: list[str] = field(default_factory=list)
    labelled: int = 0
    cached: int = 0
    skipped: int = 0
    instances: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def canvas_of(rgb: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """[H, W, 3] uint8 -> [Hc, Wc, 3] uint8 letterboxed top-left (zero padding)."""
    canvas, _, _ = letterbox(rgb, input_hw)
    return canvas


@torch.no_grad()
def teacher_records(
    teacher: torch.nn.Module,
    canvases: Sequence[np.ndarray],
    vocabulary: Sequence[str],
    *,
    features: bool,
    device: torch.device,
) -> list[TeacherRecord]:
    """Run the teacher on canvases [H, W, 3] uint8 (all of one size) -> one record each."""
    images = torch.from_numpy(np.stack([normalize_image(c) for c in canvases])).to(device)
    output = teacher(images, list(vocabulary))
    final = output.final
    h, w = images.shape[-2:]
    probs = final.logits.float().sigmoid()  # [B, Q, K]
    masks = F.interpolate(final.masks.float(), size=(h, w), mode='bilinear', align_corners=False)
    records = []
    for b, canvas in enumerate(canvases):
        score = probs[b].max(dim=-1).values
        keep = torch.nonzero(score >= STORE_MIN_SCORE).flatten()
        binary = (masks[b, keep] > 0).cpu().numpy()
        nonempty = binary.any(axis=(1, 2))
        keep, binary = keep[torch.from_numpy(nonempty).to(keep.device)], binary[nonempty]
        order = mask_nms(binary, score[keep].cpu().numpy(), NMS_IOU) if len(keep) else []
        keep, binary = keep[torch.as_tensor(order, dtype=torch.long)], binary[order]
        records.append(
            TeacherRecord(
                canvas=np.ascontiguousarray(canvas),
                boxes=final.boxes[b, keep].float().cpu().numpy().reshape(-1, 4),
                scores=probs[b, keep].cpu().numpy().reshape(-1, probs.shape[-1]),
                masks=encode_masks(binary),
                features=(
                    output.mask_features[b].to(torch.float16).cpu().numpy() if features else None
                ),
            )
        )
    return records


def label_images(
    teacher: torch.nn.Module,
    images: Iterable[SourceImage],
    cache: TeacherCache,
    *,
    total: int | None = None,
    batch_size: int = 8,
    device: torch.device | None = None,
    progress: bool = True,
) -> LabelSummary:
    """Label every image not yet in `cache` with the teacher; count what could not be read."""
    device = device or torch.device('cpu')
    identity = cache.identity
    summary = LabelSummary()
    seen: set[str] = set()
    pending: list[tuple[str, np.ndarray]] = []
    began = time.monotonic()
    bar = _bar(total, progress)

    def flush() -> None:
        if not pending:
            return
        records = teacher_records(
            teacher,
            [canvas for _, canvas in pending],
            identity.vocabulary,
            features=identity.features,
            device=device,
        )
        for (digest, _), record in zip(pending, records):
            cache.put(digest, record)
            summary.instances += len(record.masks)
        summary.labelled += len(pending)
        if bar is not None:
            bar.update(len(pending))
        pending.clear()

    for item in images:
        if item.rgb is None:
            summary.skipped += 1
            if len(summary.errors) < 20:
                summary.errors.append(f'{item.name}: {item.error}')
            if bar is not None:
                bar.update(1)
            continue
        digest = image_sha256(item.rgb)
        if digest in seen:
            if bar is not None:
                bar.update(1)
            continue
        seen.add(digest)
        summary.hashes.append(digest)
        if digest in cache:
            summary.cached += 1
            if bar is not None:
                bar.update(1)
            continue
        pending.append((digest, canvas_of(item.rgb, identity.input_hw)))
        if len(pending) >= batch_size:
            flush()
    flush()
    if bar is not None:
        bar.close()
    summary.seconds = time.monotonic() - began
    return summary


def _bar(total: int | None, enabled: bool) -> Any:  # tqdm | None
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit='img', desc='teacher', dynamic_ncols=True, smoothing=0.1)
