"""The student phase of `mobius distill`: batches of pseudo-instances and the distillation loss.

The teacher's cached instances whose best phrase score reaches `score_threshold` become the
student's targets, supervised by the training criterion itself (Hungarian matcher, focal class,
mask BCE + dice, box L1 + GIoU, and the calibration loss, so the student's pruning stays
calibrated). Class targets are soft: `soft_targets` mixes the teacher's per-phrase scores into
the one-hot of its best phrase (0 = hard labels, 1 = the teacher's scores). Two distillation
terms come on top:

- `score`: BCE of the final layer's matched queries' class probabilities against the teacher's
  per-phrase scores of the pseudo-instance each is matched to;
- `feature`: MSE between the student's mask features, taken to the teacher's width by a learned
  1x1 projection, and the teacher's mask features (resized when the strides differ).

A share of the batches (`agnostic_ratio`) asks for the prompt "object" with every pseudo-instance
as its class, so the student also keeps category-agnostic segmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobius_ros.ops.image import normalize_image
from mobius_ros.train.criterion import SetCriterion
from mobius_ros.train.data.collate import Batch
from mobius_ros.train.distill_cache import STORE_MIN_SCORE, TeacherCache

AGNOSTIC = ('object',)
KD_COMPONENTS = ('score_kd', 'feature_kd')


@dataclass(frozen=True)
class DistillSettings:
    """How the student learns from the teacher.

    Attributes:
        score_threshold: teacher score an instance needs to become a pseudo-instance.
        soft_targets: weight of the teacher's scores in the class targets (0 = one-hot).
        score_weight: weight of the matched queries' score distillation.
        feature_weight: weight of the mask-feature distillation (0 = off, no features cached).
        agnostic_ratio: share of batches with the prompt "object".
    """

    score_threshold: float = 0.3
    soft_targets: float = 0.5
    score_weight: float = 2.0
    feature_weight: float = 1.0
    agnostic_ratio: float = 0.2

    def __post_init__(self) -> None:
        if not STORE_MIN_SCORE <= self.score_threshold <= 1.0:
            raise ValueError(
                f'score_threshold must lie in [{STORE_MIN_SCORE}, 1] (the cache keeps instances'
                f' from {STORE_MIN_SCORE}), got {self.score_threshold}'
            )
        for name in ('soft_targets', 'agnostic_ratio'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'{name} must lie in [0, 1], got {getattr(self, name)}')
        if self.score_weight < 0 or self.feature_weight < 0:
            raise ValueError('distillation weights must be >= 0')


@dataclass
class DistillBatch:
    """A training batch plus the teacher's mask features [B, C_t, h, w] (or None)."""

    batch: Batch
    teacher_features: Tensor | None


class PseudoLabels:
    """The cached teacher records of a run as an endless, resumable stream of batches.

    Which records a step draws is a pure function of (seed, step, rank), as in training: each
    epoch is a fresh permutation, and the ranks of a torchrun job take disjoint slices.
    """

    def __init__(
        self,
        cache: TeacherCache,
        hashes: Sequence[str],
        settings: DistillSettings,
        *,
        batch_size: int,
        seed: int = 0,
    ) -> None:
        if not hashes:
            raise ValueError('no labelled images to distil on')
        self.cache = cache
        self.hashes = list(hashes)
        self.settings = settings
        self.batch_size = batch_size
        self.seed = seed

    def batch(self, step: int, *, rank: int = 0, world_size: int = 1) -> DistillBatch:
        """The batch of `step` on `rank`."""
        n = len(self.hashes)
        first = (step * world_size + rank) * self.batch_size
        picks = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, n)
            order = np.random.default_rng([self.seed, epoch, 17]).permutation(n)
            picks.append(self.hashes[int(order[offset])])
        rng = np.random.default_rng([self.seed, step, rank, 5])
        agnostic = bool(rng.random() < self.settings.agnostic_ratio)
        return self._collate(picks, agnostic=agnostic, step=step)

    def _collate(self, picks: Sequence[str], *, agnostic: bool, step: int) -> DistillBatch:
        vocabulary = self.cache.identity.vocabulary
        soft = self.settings.soft_targets
        images, targets, features = [], [], []
        for digest in picks:
            record = self.cache.get(digest)
            scores = record.scores
            keep = np.flatnonzero(scores.max(axis=1, initial=0.0) >= self.settings.score_threshold)
            scores = scores[keep]
            if agnostic:  # one class, "object", scored by the teacher's best phrase
                scores = scores.max(axis=1, keepdims=True)
            labels = scores.argmax(axis=1) if len(scores) else np.zeros(0, np.int64)
            onehot = np.zeros_like(scores)
            onehot[np.arange(len(labels)), labels] = 1.0
            masks = record.decoded_masks()[keep]
            images.append(torch.from_numpy(normalize_image(record.canvas)))
            targets.append(
                {
                    'labels': torch.from_numpy(labels.astype(np.int64)),
                    'boxes': torch.from_numpy(record.boxes[keep].astype(np.float32)),
                    'masks': torch.from_numpy(masks),
                    'class_targets': torch.from_numpy(
                        (soft * scores + (1 - soft) * onehot).astype(np.float32)
                    ),
                    'teacher_scores': torch.from_numpy(scores.astype(np.float32)),
                }
            )
            if record.features is not None:
                features.append(torch.from_numpy(record.features.astype(np.float32)))
        h, w = self.cache.identity.input_hw
        batch = Batch(
            images=torch.stack(images),
            targets=targets,
            phrases=AGNOSTIC if agnostic else vocabulary,
            referring=False,
            dataset='distill_agnostic' if agnostic else 'distill',
            image_ids=[step * self.batch_size + b for b in range(len(picks))],
            image_sizes=[(h, w)] * len(picks),
            orig_sizes=[(h, w)] * len(picks),
        )
        return DistillBatch(batch, torch.stack(features) if features else None)


class FeatureProjection(nn.Module):
    """Student mask features [B, C_s, h, w] -> the teacher's width [B, C_t, h, w] (1x1 conv)."""

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(student_dim, teacher_dim, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        return self.proj(features)


class DistillStudent(nn.Module):
    """The student and its feature projection as one module (one DDP wrapper for both)."""

    def __init__(self, student: nn.Module, projection: FeatureProjection | None) -> None:
        super().__init__()
        self.student = student
        self.projection = projection

    def forward(self, images: Tensor, phrases: Sequence[str]) -> tuple[object, Tensor | None]:
        """images [B, 3, H, W] -> (MobiusOutput, projected mask features [B, C_t, H/4, W/4])."""
        output = self.student(images, list(phrases))
        projected = None if self.projection is None else self.projection(output.mask_features)
        return output, projected


class DistillCriterion(nn.Module):
    """The training criterion on pseudo-instances plus the two distillation terms."""

    def __init__(self, criterion: SetCriterion, settings: DistillSettings) -> None:
        super().__init__()
        self.criterion = criterion
        self.settings = settings

    def forward(
        self,
        output: object,
        targets: Sequence[dict[str, Tensor]],
        projected: Tensor | None,
        teacher_features: Tensor | None,
    ) -> dict[str, Tensor]:
        """'loss' and every component: the criterion's plus 'score_kd' and 'feature_kd'."""
        final = output.final
        device = final.logits.device
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        matches = self.criterion.matcher(final.logits, final.boxes, final.masks, targets)
        plain = [{k: v for k, v in t.items() if k != 'teacher_scores'} for t in targets]
        losses = self.criterion(output, plain, final_matches=matches)
        zero = final.logits.sum() * 0.0
        losses['score_kd'] = zero
        s = self.settings
        pred = [final.logits[b, i] for b, (i, _) in enumerate(matches) if len(i)]
        if s.score_weight > 0 and pred:
            teacher = torch.cat(
                [t['teacher_scores'][j] for t, (i, j) in zip(targets, matches) if len(i)]
            )
            bce = F.binary_cross_entropy_with_logits(torch.cat(pred).float(), teacher)
            losses['score_kd'] = s.score_weight * bce
        losses['feature_kd'] = zero
        if s.feature_weight > 0 and projected is not None and teacher_features is not None:
            teacher = teacher_features.to(device)
            if teacher.shape[-2:] != projected.shape[-2:]:
                teacher = F.interpolate(teacher, size=projected.shape[-2:], mode='bilinear')
            losses['feature_kd'] = s.feature_weight * F.mse_loss(projected.float(), teacher)
        losses['loss'] = losses['loss'] + losses['score_kd'] + losses['feature_kd']
        return losses
