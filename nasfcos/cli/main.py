"""The ``nasfcos`` command line: one entry point, one module per verb group.

The top level only picks the verb; each verb module owns its own argparse parser
(``main(argv) -> int``), so verbs can be developed independently.  Errors raised as
:class:`~nasfcos.errors.NasfcosError` become a one-line message and exit code 2;
set ``NASFCOS_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from nasfcos import __version__
from nasfcos.errors import NasfcosError

# verb -> (module, function, one-line help)
VERBS: dict[str, tuple[str, str, str]] = {
    "validate": ("nasfcos.cli.genotype_cmds", "validate_main", "check genotype JSON files"),
    "draw": ("nasfcos.cli.genotype_cmds", "draw_main", "draw a genotype's FPN and head graph"),
    "compile": ("nasfcos.cli.compile_cmd", "main", "compile a genotype into a standalone model.py"),
    "profile": ("nasfcos.cli.profile_cmd", "main", "parameters and FLOPs of a model or genotype"),
    "export": ("nasfcos.cli.runtime_cmds", "export_main", "export model.py to ONNX (and TensorRT)"),
    "check": ("nasfcos.cli.runtime_cmds", "check_main", "compare an exported model with PyTorch"),
    "bench": ("nasfcos.cli.runtime_cmds", "bench_main", "latency benchmark across backends"),
    "data": ("nasfcos.cli.fcos_cmds", "data_main", "datasets: synthetic set, VOC conversion"),
    "train": ("nasfcos.cli.fcos_cmds", "train_main", "train a compiled detector with FCOS losses"),
    "eval": ("nasfcos.cli.fcos_cmds", "eval_main", "COCO mAP of any backend"),
    "import-release": ("nasfcos.cli.import_cmd", "main", "import a trained checkpoint of the authors' release"),
    "predict": ("nasfcos.cli.predict_cmd", "main", "detect objects in images (JSON + drawn boxes)"),
    "search": ("nasfcos.cli.search_cmds", "main", "NAS search (and: cache, eval, top)"),
    "demo": ("nasfcos.cli.demo", "main", "the main job on the shipped paper genotype"),
    "doctor": ("nasfcos.cli.doctor_cmd", "main", "what this machine can run (CPU, GPUs, CUDA, TensorRT)"),
}


def _usage() -> str:
    lines = [
        f"usage: nasfcos [--version] VERB [options]   (nasfcos {__version__})",
        "",
        "verbs:",
    ]
    width = max(len(v) for v in VERBS)
    for verb, (_, _, help_) in VERBS.items():
        lines.append(f"  {verb.ljust(width)}  {help_}")
    lines += ["", "Run 'nasfcos VERB --help' for a verb's options and an example."]
    return "\n".join(lines)


def _one_line_warning(verb: str) -> Any:
    """``warnings.formatwarning`` for the CLI: ``nasfcos VERB: warning: MESSAGE`` on one line,
    without the source file, line and code that Python prints by default."""
    from nasfcos.errors import first_line

    def fmt(message: Warning | str, category: type[Warning], filename: str, lineno: int,
            line: str | None = None) -> str:
        kind = "" if category is UserWarning else f" ({category.__name__})"
        return f"nasfcos {verb}: warning: {first_line(Warning(str(message)), None)}{kind}\n"

    return fmt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nasfcos`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"nasfcos {__version__}")
        return 0
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        print(f"nasfcos: error: unknown verb '{verb}' (see 'nasfcos --help')", file=sys.stderr)
        return 2
    module_name, func_name, _ = VERBS[verb]
    debug = os.environ.get("NASFCOS_DEBUG", "") not in ("", "0")
    if not debug:
        warnings.formatwarning = _one_line_warning(verb)
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(rest) or 0)
    except NasfcosError as exc:
        if debug:
            raise
        print(f"nasfcos {verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nasfcos {verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
