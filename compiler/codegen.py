"""Render a genotype into model.py source, and compile that source in memory."""

from __future__ import annotations

import functools
import types
from typing import Any

from nasfcos.compiler.backbones import template_environment
from nasfcos.compiler.options import CompileOptions, resolve_options
from nasfcos.compiler.plan import build_plan
from nasfcos.errors import GenotypeError
from nasfcos.genotypes import Genotype, parse_genotype
from nasfcos.modelfile import module_from_source

MAIN_TEMPLATE = "model.py.j2"


def validated_genotype(genotype: Any) -> Genotype:
    """``genotype`` as a :class:`Genotype`: one already is valid by type (its constructor
    checks every field); a JSON dict (``meta`` ignored) is parsed once.  Raises
    :class:`GenotypeError`."""
    if isinstance(genotype, Genotype):
        return genotype
    if isinstance(genotype, dict):
        return parse_genotype({k: v for k, v in genotype.items() if k != "meta"})
    raise GenotypeError(f"genotype: expected a Genotype or its JSON dict, got {type(genotype).__name__}")


@functools.lru_cache(maxsize=64)
def _bytecode(source: str, filename: str) -> types.CodeType:
    """Python's compile() of the source (~5 ms, the bulk of compile_to_module), memoised so that
    genotypes the search samples again cost almost nothing."""
    return compile(source, filename, "exec")


def _render(genotype: Genotype | dict[str, Any], options: CompileOptions | None,
            kw: dict[str, Any]) -> tuple[str, Genotype]:
    opts = resolve_options(options, **kw)
    g = validated_genotype(genotype)
    plan = build_plan(g, opts)
    source = template_environment().get_template(MAIN_TEMPLATE).render(**plan.context())
    return source, g


def compile_genotype(genotype: Genotype | dict[str, Any], options: CompileOptions | None = None,
                     **kw: Any) -> str:
    """The source of a standalone model.py for ``genotype`` (Contract 2).

    ``options`` (or keyword overrides such as ``fpn_channels=64``) set the compiled widths.
    The same genotype and options always give byte-identical text.  Raises
    :class:`GenotypeError` for an invalid genotype and :class:`NasfcosError` for bad options.
    """
    return _render(genotype, options, kw)[0]


def compile_to_module(genotype: Genotype | dict[str, Any], options: CompileOptions | None = None,
                      **kw: Any) -> types.ModuleType:
    """Compile ``genotype`` and execute the source into a fresh module (no file, not in sys.modules).

    Used by the search for every sample; the result has ``Decoder``, ``build`` and the constants
    of a model.py, and its source as ``__source__``.  For ``torch.jit.script`` or pickling, write
    the source to a file and import it (``nasfcos.modelfile.load_model_file``): TorchScript reads
    class sources from disk.  ``torch.export`` works on the in-memory module.
    """
    source, g = _render(genotype, options, kw)
    name = f"nasfcos_compiled_{g.short_hash()}"
    module = module_from_source(_bytecode(source, f"<{name}>"), name,
                                doc=f"in-memory model compiled by nasfcos ({name})")
    module.__dict__["__source__"] = source
    return module
