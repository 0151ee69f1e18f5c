"""The command line's one validation layer: argparse ``type=`` functions and shared flags.

Every value a user types is checked here, while the arguments are parsed, before any work
starts: numbers (positive, non-negative, finite, in range), sizes (``HxW``; a single number
means square), widths, devices, seed ranges, opsets, input files (regular files only: a FIFO
or device would block) and output paths (writable by a probe write, not a directory, not under
a file; an output folder is locked for the run).
A bad value becomes argparse's one-line ``nasfcos VERB: error: argument --flag: ...``
(exit 2).  These functions import nothing heavy at module level.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import math
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from nasfcos.errors import FieldError, NasfcosError
from nasfcos.io import claim_folder, regular_file, writable_path
from nasfcos.limits import MAX_SIDE, MIN_SIDE, usable_cpus

_ArgError = argparse.ArgumentTypeError


def _int(text: str) -> int:
    try:
        return int(str(text).strip(), 10)
    except ValueError:
        raise _ArgError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        v = float(str(text).strip())
    except ValueError:
        raise _ArgError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise _ArgError(f"expected a finite number, got {text!r}")
    return v


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """``type=`` for an integer in ``[lo, hi]`` (either bound may be None)."""

    def parse(text: str) -> int:
        v = _int(text)
        if lo is not None and v < lo or hi is not None and v > hi:
            if hi is None:
                raise _ArgError(f"expected an integer >= {lo}, got {v}")
            if lo is None:
                raise _ArgError(f"expected an integer <= {hi}, got {v}")
            raise _ArgError(f"expected an integer in {lo}..{hi}, got {v}")
        return v

    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False) -> Callable[[str], float]:
    """``type=`` for a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""

    def parse(text: str) -> float:
        v = _float(text)
        if lo is not None and (v <= lo if lo_open else v < lo) or hi is not None and v > hi:
            left = "(" if lo_open else "["
            raise _ArgError(f"expected a number in {left}{lo if lo is not None else '-inf'}, "
                            f"{hi if hi is not None else 'inf'}], got {text!r}")
        return v

    parse.__name__ = "number"
    return parse


#: Integers >= 1 (batch, runs, threads, iterations, classes ...).
positive_int = int_range(1)
#: Integers >= 0 (warm-up runs, workers, seeds ...).
non_negative_int = int_range(0)
#: Finite floats > 0 (learning rate, time budgets ...).
positive_float = float_range(0.0, lo_open=True)
#: Finite floats >= 0 (tolerances, noise, delays ...).
non_negative_float = float_range(0.0)
#: Any finite float.
finite_float = float_range()


def threads(text: str) -> int:
    """A thread count: 1 up to the CPUs this process may use (more only oversubscribes the
    machine; 10000 threads left a bench running for minutes at a load in the thousands)."""
    n = usable_cpus()
    v = _int(text)
    if not 1 <= v <= n:
        raise _ArgError(f"expected 1..{n} threads (this machine lets the process use {n} CPUs), got {v}")
    return v


#: A seed: an integer in 0..2**32-1 (numpy's range).
seed = int_range(0, 2**32 - 1)


def rule(check: Callable[[str, Any], Any], name: str,
         parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``type=`` that parses a value and applies the rule of the object that owns field
    ``name`` (``check(name, value)``, e.g. ``TrainConfig.check_field``): one rule, checked
    while the arguments are parsed."""

    def run(text: str) -> Any:
        try:
            return check(name, parse(text))
        except FieldError as exc:
            raise _ArgError(exc.reason) from None

    run.__name__ = name.replace("_", "-")
    return run


def size_hw(text: str) -> tuple[int, int]:
    """``"800"`` (square) or ``"800x608"`` (height x width) -> ``(H, W)``; sides in 32..8192."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*(?:[xX]\s*(\d{1,6}))?\s*", str(text))
    if not m:
        raise _ArgError(f"expected a size N or HxW such as 800 or 800x608, got {text!r}")
    h = int(m.group(1))
    w = int(m.group(2) or m.group(1))
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise _ArgError(f"size {h}x{w}: each side must be in {MIN_SIDE}..{MAX_SIDE} pixels")
    return h, w


def size_list(text: str) -> list[tuple[int, int]]:
    """``"600,800x1000"`` -> ``[(600, 600), (800, 1000)]`` (HxW each, see :func:`size_hw`)."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise _ArgError(f"expected sizes such as 600,800x1000, got {text!r}")
    if len(parts) > 64:
        raise _ArgError(f"at most 64 sizes, got {len(parts)}")
    return [size_hw(p) for p in parts]


def name_list(text: str) -> list[str]:
    """``"torch, onnxruntime"`` -> ``["torch", "onnxruntime"]`` (blank items dropped)."""
    return [p.strip() for p in str(text).split(",") if p.strip()]


def width(text: str) -> int:
    """A decoder width (FPN or head channels): ``CompileOptions``' rule (even, 2..4096)."""
    from nasfcos.compiler.options import check_width

    return rule(check_width, "fpn_channels", _int)(text)


def num_classes(text: str) -> int:
    """A class count: ``CompileOptions``' rule (1..10000)."""
    from nasfcos.compiler.options import check_num_classes

    return rule(check_num_classes, "num_classes", _int)(text)


def seed_range(text: str) -> list[int]:
    """Seeds as ``"0,1,2"`` or ``"0-4"`` (inclusive, increasing) -> list of ints (<= 1000)."""
    text = str(text).strip()
    m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if a > b:
            raise _ArgError(f"seed range {text!r} runs backwards (use {b}-{a})")
        seeds = list(range(a, b + 1)) if b - a < 1000 else None
    else:
        try:
            seeds = [int(p) for p in text.split(",") if p.strip()]
        except ValueError:
            raise _ArgError(f"expected seeds such as 0,1,2 or 0-4, got {text!r}") from None
    if not seeds or len(seeds) > 1000 or min(seeds) < 0 or max(seeds) >= 2**32:
        raise _ArgError(f"expected 1..1000 seeds in 0..2**32-1, got {text!r}")
    return seeds


def opset(text: str) -> int:
    """An ONNX opset the exporter can write: 19 (first with DeformConv) up to the installed
    onnx package's newest."""
    v = _int(text)
    try:
        import onnx

        newest = int(onnx.defs.onnx_opset_version())
    except ImportError:  # pragma: no cover - onnx is a core dependency
        newest = 23
    if not 19 <= v <= newest:
        raise _ArgError(f"opset {v} is not supported: expected 19..{newest} "
                        "(19 is the first with DeformConv)")
    return v


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against this machine (a CUDA device must
    exist)."""
    text = str(text).strip()
    m = re.fullmatch(r"(cpu|cuda)(?::(\d{1,3}))?", text)
    if not m or (m.group(1) == "cpu" and m.group(2) is not None):
        raise _ArgError(f"unknown device {text!r} (expected cpu, cuda or cuda:N)")
    if m.group(1) == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise _ArgError(f"{text}: no CUDA GPU on this machine (use --device cpu)")
        index = int(m.group(2) or 0)
        if index >= torch.cuda.device_count():
            raise _ArgError(f"{text}: only {torch.cuda.device_count()} CUDA device(s) here")
    return text


def _as_arg_error(fn: Callable[[], Path]) -> str:
    """The checked path as the string the user typed (argparse values stay plain strings)."""
    try:
        return str(fn())
    except NasfcosError as exc:
        raise _ArgError(str(exc)) from None


def input_file(text: str) -> str:
    """An existing regular file to read (a FIFO, socket, device or folder is refused)."""
    return _as_arg_error(lambda: regular_file(text, "file"))


def input_dir(text: str) -> str:
    """An existing folder to read."""
    if not Path(text).is_dir():
        raise _ArgError(f"{text}: no such folder")
    return text


def output_file(text: str) -> str:
    """A file to write: not a folder or special file, its folder creatable and writable."""
    return _as_arg_error(lambda: writable_path(text))


def output_dir(text: str) -> str:
    """A folder to write into: an existing writable folder, or one that can be created.  The
    folder is owned by this run from here on (:func:`nasfcos.io.claim_folder`): a second run
    naming it fails at once, naming the owner."""
    path = _as_arg_error(lambda: writable_path(text, directory=True))
    claim_folder(path)
    return path


def genotype_arg(text: str) -> str:
    """A genotype: a shipped name (``nas_fcos_fpn_head``) or a regular JSON file."""
    from nasfcos.genotypes import PAPER_GENOTYPES

    if Path(text).exists():
        input_file(text)
    elif str(text).removesuffix(".json") not in PAPER_GENOTYPES:
        from nasfcos.genotypes.resolve import unknown_genotype_message

        raise _ArgError(unknown_genotype_message(text))
    return text


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs wrapped to the terminal: a paragraph (a run of unindented
    lines) is filled; an indented line (an example command) is kept as written, to be copied."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        text = re.sub(r"^\S.*(?:\n\S.*)*", lambda para: textwrap.fill(
            para.group(0), width - len(indent), break_on_hyphens=False, break_long_words=False),
            text, flags=re.M)
        return textwrap.indent(text, indent)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are a :class:`NasfcosError` (the dispatcher
    prints them as one line, ``nasfcos VERB: error: ...``, exit 2) instead of a usage block
    and ``SystemExit``.  Descriptions and epilogs are wrapped, their examples keep their
    lines (:class:`_HelpFormatter`)."""

    #: The parser of the command being run in this thread (a context variable: two commands
    #: run in threads of one process do not see each other's): the innermost one that parsed
    #: last (a verb's subcommand parses inside the verb's).  :meth:`flag` names its fields' flags.
    current: ClassVar[contextvars.ContextVar[Parser | None]] = contextvars.ContextVar("nasfcos_parser",
                                                                                      default=None)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"formatter_class": _HelpFormatter, **kwargs})

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        Parser.current.set(self)
        return super().parse_known_args(*args, **kwargs)

    def flag(self, field: str) -> str | None:
        """The flag of this command that sets ``field`` (``--field-name`` where that is one of
        its spellings, else its longest), or None where no flag of this command does."""
        flags = [s for a in self._actions if a.dest == field for s in a.option_strings]
        spelled = "--" + field.replace("_", "-")
        return spelled if spelled in flags else max(flags, key=len, default=None)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise NasfcosError(f"{message} (see '{self.prog} --help')")

    def print_help(self, file: Any = None) -> None:
        """The help on stdout; a failed write (a full disk) raises, where argparse drops it."""
        (file or sys.stdout).write(self.format_help())


# -- shared flags: the same spelling in every verb ------------------------------------------

def add_output(p: argparse.ArgumentParser, help: str, *, default: str | None = None,
               directory: bool = False, required: bool = False) -> None:
    """``-o/--output``: the verb's main output (file, or folder with ``directory``)."""
    p.add_argument("-o", "--output", type=output_dir if directory else output_file,
                   default=default, required=required, metavar="DIR" if directory else "FILE",
                   help=help)


def print_json(obj: Any, file: Any = None) -> None:
    """A verb's ``--json`` result: indented, keys sorted, other types as their ``str``."""
    print(json.dumps(obj, indent=2, sort_keys=True, default=str), file=file)


def say(args: argparse.Namespace, *parts: Any) -> None:
    """Human-readable lines: stdout, or stderr when ``--json`` keeps stdout for the JSON."""
    print(*parts, file=sys.stderr if args.json else sys.stdout, flush=True)


def add_json(p: argparse.ArgumentParser, help: str = "print the result as JSON on stdout") -> None:
    """``--json``: JSON on stdout (never a file name)."""
    p.add_argument("--json", action="store_true", help=help)


def add_quiet(p: argparse.ArgumentParser) -> None:
    """``-q/--quiet``: no progress output (bars on a TTY, stage lines otherwise)."""
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress (default: a bar on a terminal, one line per stage otherwise)")


def add_threads(p: argparse.ArgumentParser, default: int | None = None) -> None:
    """``--threads N``: CPU threads (intra-op) for every backend."""
    p.add_argument("--threads", type=threads, default=default, metavar="N",
                   help="CPU threads" + (f" (default {default})" if default else ""))


def add_device(p: argparse.ArgumentParser, default: str | None = "cpu",
               help: str | None = None) -> None:
    """``--device cpu|cuda|cuda:N`` (checked against this machine)."""
    p.add_argument("--device", type=device, default=default,
                   help=help or f"cpu, cuda or cuda:N (default {default})")


# -- shared flag groups: one spelling, type and range; each verb says its defaults ------------

def add_widths(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, fpn_help: str, head_help: str,
               default: int | None = None, metavar: str | None = None) -> None:
    """``--fpn-channels C`` and ``--head-channels C``: the decoder widths (:func:`width`:
    even, 2..4096), both with ``default`` (None: the verb works it out)."""
    p.add_argument("--fpn-channels", type=width, default=default, metavar=metavar, help=fpn_help)
    p.add_argument("--head-channels", type=width, default=default, metavar=metavar, help=head_help)


def add_backbone(p: argparse.ArgumentParser, help: str, **kwargs: Any) -> None:
    """``--backbone NAME``: a detector backbone; the names are listed in the help, where they
    wrap (in the usage line they would not)."""
    from nasfcos.compiler.backbones import BACKBONE_NAMES

    p.add_argument("--backbone", choices=BACKBONE_NAMES, metavar="NAME",
                   help=help.format(names=", ".join(BACKBONE_NAMES)), **kwargs)


def add_num_classes(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str, *,
                    default: int | None = 80, metavar: str | None = None) -> None:
    """``--num-classes K``: foreground classes (:func:`num_classes`)."""
    p.add_argument("--num-classes", type=num_classes, default=default, metavar=metavar,
                   help=help)


def add_resize(p: argparse.ArgumentParser, *, default: str = "") -> None:
    """``--min-size N`` and ``--max-size N`` (32..MAX_SIDE): the short-side resize and the long-side
    cap of training and inference; ``default`` words the default (800 / 1333)."""
    p.add_argument("--min-size", type=int_range(32, MAX_SIDE), help=f"resize short side to (default {default}800)")
    p.add_argument("--max-size", type=int_range(32, MAX_SIDE), help=f"cap long side at (default {default}1333)")


def add_detector_model(p: argparse.ArgumentParser, *, weights_help: str, backend_help: str) -> None:
    """The detector an inference verb runs: ``MODEL`` (model.py, .onnx or .engine), ``--weights``
    (model.py only), ``--backend``, ``--device`` (default cpu) and the resize flags
    (default: the training run's)."""
    p.add_argument("model", type=input_file, help="model.py, model.onnx or model.engine")
    p.add_argument("--weights", type=input_file, help=weights_help)
    p.add_argument("--backend", help=backend_help)
    p.add_argument("--device", type=device, default="cpu", help="cpu or cuda (default cpu)")
    add_resize(p, default="the training run's, else ")


def add_run_inputs(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, batch: int | None,
                   batch_help: str | None, seed_help: str, sizes: str | None = None,
                   sizes_help: str | None = None) -> None:
    """The seeded example inputs of an export, check or benchmark: ``--sizes HxW,...`` (only
    with ``sizes_help``), ``--batch N`` (>= 1, default ``batch``) and ``--seed S`` (default 0)."""
    if sizes_help is not None:
        p.add_argument("--sizes", type=size_list, default=sizes, help=sizes_help)
    p.add_argument("--batch", type=positive_int, default=batch, help=batch_help)
    p.add_argument("--seed", type=seed, default=0, help=seed_help)


def add_timing(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, runs: int | None, runs_help: str,
               warmup: int | None, warmup_help: str) -> None:
    """``--warmup N`` (>= 0) untimed and ``--runs N`` (>= 1) timed runs of a latency measurement."""
    p.add_argument("--warmup", type=non_negative_int, default=warmup, metavar="N", help=warmup_help)
    p.add_argument("--runs", type=positive_int, default=runs, metavar="N", help=runs_help)


def add_calibration(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, images_help: str,
                    method_help: str) -> None:
    """int8 calibration: ``--calib-images N`` (default 32) and ``--calib-method``
    (minmax, entropy, percentile; default minmax)."""
    p.add_argument("--calib-images", type=positive_int, default=32, metavar="N", help=images_help)
    p.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help=method_help)


__all__ = ["MAX_SIDE", "MIN_SIDE", "Parser", "add_backbone", "add_calibration", "add_device", "add_json",
           "add_detector_model", "add_num_classes", "add_output", "add_quiet", "add_resize", "add_run_inputs", "add_threads", "add_timing",
           "add_widths", "device", "finite_float", "float_range", "genotype_arg",
           "input_dir", "input_file", "int_range", "name_list", "non_negative_float", "non_negative_int", "num_classes",
           "opset", "output_dir", "output_file", "positive_float", "positive_int", "print_json", "rule", "say", "seed",
           "seed_range", "size_hw", "size_list", "threads", "width"]
