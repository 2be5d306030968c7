"""Query pruning and the bottleneck design, measured: full vs pruned vs GLEE-style.

For each MOBIUS variant, in one interleaved run per variant (so ratios are paired):
- `full`: every decoder layer on all Q queries (pruning off);
- `Tab. 14 defaults`: sigmoid, lower 0.05, upper 0.2, min_keep 100, as the robot runs it;
- `forced`: the thresholds pinned at 1.0 so that exactly `min_keep = Q / 3` queries survive
  every layer (100 of 300; 33 of 100 for the Q = 100 mobile-lite, where the Tab. 14 defaults'
  min_keep of 100 prunes nothing). Random weights are not a trained model: the class head
  starts at the focal-loss prior (confidence about 0.01), below every threshold, so with the
  defaults min_keep decides too, plus the few random queries that clear 0.05;
- the GLEE-style configuration on the same backbone (all-scale encoder over strides 8-64,
  fusion over all tokens, 9-layer multi-scale decoder) where one is paired with the variant.

Decoder MACs (the FLOPs table's "transformer decoder": two-stage selection, layers, heads, mask
head; live ops only) come from `mobius_ros.model.flops.count_model_forward` on the same
forward. Two backends: the PyTorch model (`Mobius.forward`) and ONNX Runtime on the exported
graphs (`bench/onnx_model.py`): the single full graph vs the split graphs with the predictor's
host pruning loop.

Run: `python -m bench.pruning --size 384x512 --threads 2 --repeats 8`
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.common import (
    Skipped,
    Timing,
    TimingConfig,
    environment,
    fix_threads,
    paired_ratio,
    parse_size,
    skipped_entry,
    time_interleaved,
    write_results,
)
from bench.ours import Built, build_mobius, params_m

# Variant -> (label, build_model name, overrides) of its GLEE-style counterpart.
GLEE_COUNTERPARTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    'MOBIUS-R50': ('GLEE-R50', 'GLEE-R50', {}),
    'MOBIUS-MNv4-conv-S': (
        'GLEE-style MNv4-conv-S',
        'GLEE-R50',
        {'backbone': {'name': 'mobilenetv4_conv_small'}},
    ),
}


@dataclass(frozen=True)
class Setting:
    """One pruning configuration to time."""

    label: str
    pruning: Any  # mobius_ros.model.pruning.PruningConfig


def settings_for(num_queries: int, *, kept_fraction: float) -> list[Setting]:
    """Full, the paper's defaults, and forced survival of `kept_fraction` of the queries."""
    from mobius_ros.model.pruning import PruningConfig

    kept = max(1, round(num_queries * kept_fraction))
    return [
        Setting('full (no pruning)', PruningConfig(trajectory='none')),
        Setting('Tab. 14 defaults', PruningConfig()),
        Setting(
            f'forced: {kept} of {num_queries} kept',
            PruningConfig(trajectory='sigmoid', lower=1.0, upper=1.0, min_keep=kept),
        ),
    ]


def count(built: Built, pruning: Any) -> dict[str, Any]:
    """Live GMACs per component (the FLOPs table's split) and the survivors of each layer.

    `DECODER` is the paper's "transformer decoder": two-stage selection, the layers, their
    heads and the mask head, counted only where their work reaches the final outputs.
    """
    import torch

    from mobius_ros.model.flops import DECODER, count_model_forward, giga

    with torch.no_grad():
        macs = count_model_forward(built.model, built.images, built.text, pruning=pruning)
    return {
        'decoder_gmacs': round(giga(macs.components[DECODER]), 4),
        'total_gmacs': round(giga(macs.total), 3),
        'gmacs_by_component': {k: round(v, 4) for k, v in macs.giga().items()},
        'kept_per_layer': list(macs.queries_per_layer),
    }


def _runner(built: Built, pruning: Any) -> Callable[[], object]:
    import torch

    def run() -> object:
        with torch.inference_mode():
            return built.model(built.images, built.text, pruning=pruning)

    return run


@dataclass(frozen=True)
class _Row:
    """One timed configuration and what its ratios are taken against."""

    name: str
    configuration: str
    run: Callable[[], object]
    counted: dict[str, Any]
    reference: str  # key of the row its latency ratio is against
    params_m: float


def _glee_row(
    variant: str, size: tuple[int, int], built: Built, full: Setting, reference: str
) -> _Row:
    import torch

    from mobius_ros.model.variants import build_model

    label, name, overrides = GLEE_COUNTERPARTS[variant]
    torch.manual_seed(0)
    backbone = {**overrides.get('backbone', {}), 'image_size': tuple(size)}
    glee = Built(label, build_model(name, backbone=backbone).eval(), built.images, built.text)
    return _Row(
        label,
        f'GLEE-style, vs {variant} torch full',
        _runner(glee, full.pruning),
        count(glee, full.pruning),
        reference,
        params_m(glee.model),
    )


def _onnx_rows(
    variant: str,
    size: tuple[int, int],
    settings: list[Setting],
    counts: dict[str, dict[str, Any]],
    *,
    threads: int,
    spinning: bool,
    stand_in_text: bool,
    params: float,
) -> dict[str, _Row]:
    """ONNX Runtime rows: the single full graph, and the split graphs under each setting."""
    from bench.onnx_model import export_variant, full_runner, split_runner

    exported = export_variant(
        variant, size, threads=threads, spinning=spinning, stand_in_text=stand_in_text
    )
    full_key = 'onnxruntime: full graph'
    rows = {
        full_key: _Row(
            variant,
            full_key,
            full_runner(exported),
            counts[settings[0].label],
            full_key,
            params,
        )
    }
    for setting in settings:
        run = split_runner(exported, setting.pruning)
        # The host loop reports what survived; random weights on ORT keep what torch keeps
        # only up to ties, so the counts come from the graphs that are timed.
        counted = {**counts[setting.label], 'kept_per_layer': list(run())}
        key = f'onnxruntime: split, {setting.label}'
        rows[key] = _Row(variant, key, run, counted, full_key, params)
    return rows


def measure_variant(
    variant: str,
    size: tuple[int, int],
    timing: TimingConfig,
    *,
    kept_fraction: float,
    backends: tuple[str, ...],
    ort_spinning: bool = False,
    stand_in_text: bool = False,
) -> list[dict[str, Any]]:
    """Entries for one variant (both backends, its GLEE counterpart), one interleaved run."""
    built = build_mobius(variant, size, stand_in_text=stand_in_text)
    settings = settings_for(built.model.decoder.num_queries, kept_fraction=kept_fraction)
    counts = {s.label: count(built, s.pruning) for s in settings}
    params = params_m(built.model)
    torch_full = f'torch: {settings[0].label}'
    rows: dict[str, _Row] = {}
    skipped: list[dict[str, Any]] = []
    if 'torch' in backends:
        for s in settings:
            key = f'torch: {s.label}'
            rows[key] = _Row(
                variant, key, _runner(built, s.pruning), counts[s.label], torch_full, params
            )
        if variant in GLEE_COUNTERPARTS:
            label = GLEE_COUNTERPARTS[variant][0]
            try:
                rows[label] = _glee_row(variant, size, built, settings[0], torch_full)
            except Exception as error:  # recorded, not dropped
                skip = Skipped(label, f'{type(error).__name__}: {error}'[:500])
                skipped.append({**skipped_entry(skip), 'configuration': 'GLEE-style'})
    if 'onnxruntime' in backends:
        try:
            rows.update(
                _onnx_rows(
                    variant,
                    size,
                    settings,
                    counts,
                    threads=timing.threads,
                    spinning=ort_spinning,
                    stand_in_text=stand_in_text,
                    params=params,
                )
            )
        except Exception as error:  # an export failure is a result, not a crash
            skip = Skipped(variant, f'{type(error).__name__}: {error}'[:500])
            skipped.append({**skipped_entry(skip), 'configuration': 'onnxruntime'})
    timings = time_interleaved({key: row.run for key, row in rows.items()}, timing)
    full_counts = counts[settings[0].label]
    entries = []
    for key, row in rows.items():
        entry = _entry(
            row.name,
            row.configuration,
            timings[key],
            timings[row.reference],
            row.counted,
            full_counts['decoder_gmacs'],
        )
        entry['params_m'] = row.params_m
        entry['total_macs_ratio'] = round(
            row.counted['total_gmacs'] / full_counts['total_gmacs'], 3
        )
        entries.append(entry)
    return entries + skipped


def _entry(
    name: str,
    configuration: str,
    timing: Timing,
    reference: Timing,
    counted: dict[str, Any],
    reference_decoder_gmacs: float,
) -> dict[str, Any]:
    return {
        'name': name,
        'status': 'ok',
        'configuration': configuration,
        'kept_queries': counted['kept_per_layer'][-1],
        **counted,
        **timing.summary(),
        'latency_ratio': round(paired_ratio(timing, reference), 3),
        'decoder_macs_ratio': round(counted['decoder_gmacs'] / reference_decoder_gmacs, 3),
    }


def run_pruning(
    *,
    variants: list[str],
    size: tuple[int, int],
    timing: TimingConfig,
    kept_fraction: float,
    backends: tuple[str, ...],
    ort_spinning: bool = False,
    stand_in_text: bool = False,
    on_progress: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """Measure every variant; a variant that cannot be built is recorded as skipped.

    `on_progress` gets the payload so far after each variant (big variants take many minutes
    on the shared CPU; an interrupted run keeps what it measured).
    """
    fix_threads(timing.threads)
    env = environment(timing)
    entries: list[dict[str, Any]] = []
    pending = list(variants)

    def payload() -> dict[str, Any]:
        return {
            **_header(backends, ort_spinning, stand_in_text),
            'input_hw': list(size),
            'kept_fraction': kept_fraction,
            'variants_not_measured': list(pending),
            'environment': env,
            'results': entries,
        }

    for variant in variants:
        try:
            measured = measure_variant(
                variant,
                size,
                timing,
                kept_fraction=kept_fraction,
                backends=backends,
                ort_spinning=ort_spinning,
                stand_in_text=stand_in_text,
            )
        except Exception as error:  # e.g. MOBIUS-0 without the optional fastervit package
            skip = Skipped(variant, f'{type(error).__name__}: {error}'[:500])
            measured = [{**skipped_entry(skip), 'configuration': 'all'}]
        entries += measured
        pending.remove(variant)
        _print(measured)
        if on_progress is not None:
            on_progress(payload())
        gc.collect()
    return payload()


def _header(backends: tuple[str, ...], ort_spinning: bool, stand_in_text: bool) -> dict[str, Any]:
    return {
        'benchmark': 'pruning',
        'description': 'Random weights, batch 1, 80 COCO names as cached text. torch: '
        'Mobius.forward (layer loop in PyTorch); onnxruntime: the exported graphs, either the '
        'single full graph or encoder + per-layer decoder graphs + mask head with the '
        "predictor's host pruning loop (pre/post-processing excluded in both). latency_ratio: "
        'paired, vs the same backend with pruning off (torch) or the full graph (onnxruntime); '
        'GLEE rows: vs the MOBIUS variant on the same backbone (torch). decoder MACs: the '
        '"transformer decoder" component of mobius_ros.model.flops (two-stage selection, '
        'layers, heads, mask head), live ops only.',
        'note': 'Random weights: the class head starts at the focal-loss prior (confidence about '
        '0.01), below every threshold, so pruning keeps about min_keep queries (Tab. 14: 100) '
        'whatever the image, the regime of a trained model on background queries. "forced" pins '
        'the thresholds at 1.0 so exactly min_keep = Q/3 survive (33 of 100 on mobile-lite, '
        "where min_keep 100 prunes nothing). Pruning with thresholds makes every layer's class "
        'head live, hence decoder MACs slightly above the unpruned count when nothing is pruned.',
        'backends': list(backends),
        'ort_spinning': ort_spinning,
        'stand_in_text': stand_in_text,
    }


def _print(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        if e['status'] != 'ok':
            print(f'[pruning] skipped {e["name"]} ({e["configuration"]}): {e["reason"]}')
            continue
        print(
            f'{e["name"]:>24} {e["configuration"]:>34}: {e["median_ms"]:8.1f} ms '
            f'x{e["latency_ratio"]:.2f}; decoder {e["decoder_gmacs"]:.3f} G '
            f'x{e["decoder_macs_ratio"]:.2f}; kept {e["kept_per_layer"]}'
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', default='384x512')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=8)
    parser.add_argument('--kept-fraction', type=float, default=1 / 3)
    parser.add_argument(
        '--variants',
        nargs='*',
        default=['MOBIUS-mobile-lite', 'MOBIUS-MNv4-conv-S', 'MOBIUS-0', 'MOBIUS-R50'],
    )
    parser.add_argument(
        '--backends', nargs='*', choices=('torch', 'onnxruntime'), default=['torch', 'onnxruntime']
    )
    parser.add_argument(
        '--ort-spinning',
        action='store_true',
        help="keep ONNX Runtime's busy-waiting thread pools (its default; see onnx_model.py)",
    )
    parser.add_argument(
        '--stand-in-text',
        action='store_true',
        help='random-init text tower of the same width instead of the variant one (cached '
        'text: only D and T matter per frame); for machines without the MiniLM wheel',
    )
    parser.add_argument('--output', default='pruning')
    args = parser.parse_args(argv)
    payload = run_pruning(
        variants=args.variants,
        size=parse_size(args.size),
        timing=TimingConfig(warmup=args.warmup, repeats=args.repeats, threads=args.threads),
        kept_fraction=args.kept_fraction,
        backends=tuple(args.backends),
        ort_spinning=args.ort_spinning,
        stand_in_text=args.stand_in_text,
        on_progress=lambda partial: write_results(args.output, partial),
    )
    print(f'wrote {write_results(args.output, payload)}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
