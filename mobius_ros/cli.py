"""The `mobius` command line.

Each sub-command lives in `mobius_ros/commands/<name>.py` with two functions,
`configure(parser)` and `run(args) -> int`, and is imported only when invoked, so `mobius --help`
and the light commands start without torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

# name -> (module under mobius_ros.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    'flops': ('flops', 'per-component FLOPs table of a variant (paper Tab. 10-12)'),
    'synth': ('synth', 'generate a synthetic open-vocabulary scene dataset (COCO format)'),
    'render-eval': (
        'render_eval',
        'render an evaluation set with the independent renderer (COCO + referring file)',
    ),
    'train': ('train', 'train a MOBIUS model'),
    'distill': ('distill', 'teach a smaller student from a teacher on unlabelled images or bags'),
    'convert-glee': ('convert_glee', "convert GLEE's released checkpoints into ours"),
    'eval': ('eval', 'evaluate a model: COCO AP, agnostic AR, referring P@0.5, pruning study'),
    'export': ('export', 'export split and full ONNX graphs (and the text encoder)'),
    'quantize': ('quantize', 'int8 copy of an export folder, calibrated on images'),
    'build-engine': ('build_engine', 'build TensorRT engines ahead of time'),
    'segment': ('segment', 'segment images or folders; writes overlays and JSON'),
    'bag': ('bag', 'process a rosbag2 recording offline'),
    'demo': ('demo', 'the end-to-end demo: node, simulated camera, service client'),
}


def build_parser(names: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Return the top-level parser; only the commands in `names` get their full arguments."""
    parser = argparse.ArgumentParser(prog='mobius', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for name, (module, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name in names:
            _load(module).configure(command_parser)
    return parser


def _load(module: str) -> ModuleType:
    return importlib.import_module(f'mobius_ros.commands.{module}')


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = [a for a in argv[:1] if a in COMMANDS]
    args = build_parser(chosen).parse_args(argv)
    return int(_load(COMMANDS[args.command][0]).run(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
