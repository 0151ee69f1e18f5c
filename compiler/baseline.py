"""The FPN-FCOS baseline, built the same way as compiled genotypes.

``compile_baseline(options)`` renders ``templates/baseline_fpn_fcos.py.j2`` into a standalone
``model.py`` with the Contract 2 interface (``Decoder``, ``build``, the width constants and,
with ``options.detector``, the same ``Detector`` as compiled genotypes), so every profile
and benchmark of a NAS-FCOS decoder can be read against FPN-FCOS at the same widths.

Decoder = FCOS's FPN (1x1 laterals on c3..c5, nearest top-down sums, 3x3 output convs, p6
and p7 from p5 by stride-2 3x3 convs) + FCOS's head (4 x conv3x3 + GN + ReLU towers shared
across levels, cls / box / centerness predictors, per-level scales).  The paper's baseline
is FPN-FCOS @256: ``CompileOptions(fpn_channels=256)``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from types import ModuleType
from typing import Any

from nasfcos.compiler.backbones import backbone_channels, template_environment
from nasfcos.compiler.options import CompileOptions, options_context
from nasfcos.compiler.plan import GENERATOR_VERSION
from nasfcos.modelfile import module_from_source

#: The baseline's name, written into the file (``GENOTYPE_NAME``) and accepted by ``nasfcos profile``.
BASELINE_NAME = "fpn-fcos"
#: Width of the paper's FPN-FCOS baseline.
BASELINE_CHANNELS = 256


def baseline_hash() -> str:
    """Stable identifier of the baseline architecture (hex sha256; stands in for GENOTYPE_HASH)."""
    doc = json.dumps({"baseline": BASELINE_NAME, "format": "nasfcos-baseline/1"}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def _context(options: CompileOptions) -> dict[str, Any]:
    # a detector's Decoder is always built with its backbone's widths
    in_channels = backbone_channels(options.backbone) if options.detector else options.in_channels
    options_repr = ", ".join(f"{f.name}={getattr(options, f.name)!r}" for f in fields(options))
    regenerate = (
        'python -c "from nasfcos.compiler import CompileOptions; from nasfcos.compiler.baseline import '
        f"compile_baseline; print(compile_baseline(CompileOptions({options_repr})), end='')\" > model.py"
    )
    return {
        "name": BASELINE_NAME,
        "generator_version": GENERATOR_VERSION,
        "regenerate": regenerate,
        "genotype_hash": baseline_hash(),
        "fpn_channels": options.fpn_channels,
        "head_channels": options.resolved_head_channels,
        "num_classes": options.num_classes,
        "in_channels": in_channels,
        "detector": options.detector,
        "backbone": options.backbone,
        **options_context(options),
    }


def compile_baseline(options: CompileOptions | None = None) -> str:
    """Source of a standalone FPN-FCOS ``model.py`` for ``options`` (byte-identical per options).

    ``options.fpn_channels`` / ``head_channels`` / ``num_classes`` / ``in_channels`` are the
    compiled defaults; with ``options.detector`` the file also has ``Detector`` (backbone
    ``options.backbone``; ``IN_CHANNELS`` is then the backbone's widths).
    """
    if options is None:
        options = CompileOptions(fpn_channels=BASELINE_CHANNELS)
    template = template_environment().get_template("baseline_fpn_fcos.py.j2")
    return template.render(**_context(options))


def baseline_module(options: CompileOptions | None = None) -> ModuleType:
    """Compile the baseline and import it as a module (in memory, not written to disk)."""
    source = compile_baseline(options)
    name = f"nasfcos_baseline_{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    return module_from_source(source, name, register=True)  # dataclasses / pickling look it up
