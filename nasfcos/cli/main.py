"""The ``nasfcos`` command line: one entry point, one module per verb group.

The top level only picks the verb; each verb module owns its own argparse parser
(``main(argv) -> int``), so verbs can be developed independently.  Errors raised as
:class:`~nasfcos.errors.NasfcosError` become a one-line message and exit code 2;
set ``NASFCOS_DEBUG=1`` to see the traceback instead.  Errors of the machine (full or
read-only disk, a name too long, a closed pipe, a full stdout) are one line as well.  Every
output folder a verb names is locked for the run (``nasfcos.io.output_claims``).
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from nasfcos import __version__
from nasfcos.cli.args import Parser
from nasfcos.errors import FieldError, NasfcosError, first_line
from nasfcos.io import output_claims

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
    width = max(len(v) for v in VERBS)
    verbs = [f"  {verb.ljust(width)}  {help_}" for verb, (_, _, help_) in VERBS.items()]
    return "\n".join([f"usage: nasfcos [--version] VERB [options]   (nasfcos {__version__})", "",
                      "verbs:", *verbs, "", "Run 'nasfcos VERB --help' for a verb's options and an example."])


def flag_message(exc: NasfcosError, parser: Parser | None = None) -> str:
    """An error's one line, a field name (:class:`FieldError`) shown as its ``--flag``: the
    flag of ``parser`` (the command the user ran) that sets the field; the field's name where
    that command has no such flag (the field was derived, not typed)."""
    if not isinstance(exc, FieldError):
        return str(exc)
    flag = parser.flag(exc.field) if parser else f"--{exc.field.replace('_', '-')}"
    return f"{flag}: {exc.reason}" if flag else str(exc)


def _one_line_warning(verb: str) -> Any:
    """``warnings.formatwarning`` for the CLI: ``nasfcos VERB: warning: MESSAGE`` on one line,
    without the source file, line and code that Python prints by default."""

    def fmt(message: Warning | str, category: type[Warning], filename: str, lineno: int,
            line: str | None = None) -> str:
        kind = "" if category is UserWarning else f" ({category.__name__})"
        return f"nasfcos {verb}: warning: {first_line(Warning(str(message)), None)}{kind}\n"

    return fmt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nasfcos`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    verb = args[0] if args else ""
    debug = os.environ.get("NASFCOS_DEBUG", "") not in ("", "0")
    real_stdout = sys.stdout
    sys.stdout = _NamedStream(real_stdout, "stdout")  # type: ignore[assignment]
    try:
        try:
            code = _dispatch(args, debug)
        finally:  # a full (/dev/full) or closed stdout fails here, not in the interpreter's exit
            sys.stdout.flush()
        return code
    except OSError as exc:
        if debug or exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        return _environment_error(verb if verb in VERBS else "", exc)
    finally:
        sys.stdout = real_stdout


class _NamedStream:
    """A text stream whose write errors name it (``stdout: No space left on device``)."""

    def __init__(self, stream: object, name: str) -> None:
        self._stream, self._name = stream, name

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)  # type: ignore[attr-defined, no-any-return]
        except OSError as exc:
            exc.filename = exc.filename or self._name
            raise

    def flush(self) -> None:
        try:
            self._stream.flush()  # type: ignore[attr-defined]
        except OSError as exc:
            exc.filename = exc.filename or self._name
            raise

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def _dispatch(args: list[str], debug: bool) -> int:
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
    if not debug:
        warnings.formatwarning = _one_line_warning(verb)
    func = getattr(importlib.import_module(module_name), func_name)
    Parser.current.set(None)
    try:
        with output_claims(verb):  # every -o DIR is this run's until it ends
            return int(func(rest) or 0)
    except NasfcosError as exc:
        if debug:
            raise
        _say(f"nasfcos {verb}: error: {flag_message(exc, Parser.current.get())}")
        return 2
    except KeyboardInterrupt:
        _say(f"nasfcos {verb}: interrupted")
        return 130


#: Errors of the machine rather than of the program: a full or read-only disk, a path that
#: runs through a file or is too long, a closed pipe.  One line and exit 2 (141 for a closed
#: pipe, as the shell reports SIGPIPE), never a traceback.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOTDIR,
                                errno.ENAMETOOLONG, errno.EPIPE, errno.EACCES, errno.EPERM,
                                errno.EIO, errno.EFBIG, errno.EISDIR, errno.ENOENT})


def _say(line: str) -> None:
    """A line on stderr that never raises (stderr may be the closed pipe itself)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _detach_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _environment_error(verb: str, exc: OSError) -> int:
    """One line for an :data:`ENVIRONMENT_ERRNOS` error; exit 2, or 141 for a closed pipe."""
    prefix = f"nasfcos {verb}: error:" if verb else "nasfcos: error:"
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno == errno.EPIPE or exc.filename == "stdout":
        _detach_stdout()
    if exc.errno == errno.EPIPE:
        _say(f"{prefix} {where or 'stdout: '}closed early (broken pipe)")
        return 141
    _say(f"{prefix} {where}{exc.strerror or exc}")
    return 2
