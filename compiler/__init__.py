"""Compiler: a genotype (Contract 1) -> a standalone, static model.py (Contract 2).

>>> from nasfcos.compiler import compile_genotype, compile_to_module, CompileOptions
>>> from nasfcos.genotypes import load_paper_genotype
>>> source = compile_genotype(load_paper_genotype(), CompileOptions(fpn_channels=128))
>>> source.startswith("# NAS-FCOS decoder")
True

Pieces: :mod:`~nasfcos.compiler.options` (validated :class:`CompileOptions`),
:mod:`~nasfcos.compiler.plan` (graph analysis, dead-path elimination and naming, producing
plain records), ``templates/*.j2`` (Jinja2; they only print the records: ``model.py.j2``,
``baseline_fpn_fcos.py.j2``, both including ``constants.py.j2``, the model file's constants),
``pasted_*.py`` (ordinary modules whose code the templates paste: the DCNv2 layer, GroupNorm,
the backbones, the Detector), :mod:`~nasfcos.compiler.codegen` (rendering, in-memory
compilation) and :mod:`~nasfcos.compiler.reference` (the dynamic reference interpreter, the
test oracle).

Layers (as the authors' release defines them; widths C = fpn_channels, H = head_channels):

* ``Adapter``: backbone level -> 1x1 conv (no bias) -> BN -> ReLU, only for levels read.
* ``SepConv``: depthwise kxk -> pointwise 1x1 (no bias) -> norm -> ReLU, once (the release's
  ``repeats=1``), dilation 1/3/6, size-preserving padding.  ``DeformConvNormReLU``: ``DeformConv3x3`` (DCNv2: offsets and
  sigmoid masks from a zero-initialised 3x3 conv with bias, 2 offset groups, main conv with
  bias, ``torchvision.ops.deform_conv2d``) -> norm -> ReLU.  ``skip``: no module at all.
* ``WeightedSum`` (agg ``sum``): a*x + b*y, per-channel a, b initialised to 1.
  ``ConcatReduce`` (agg ``concat``): cat -> norm(2C) -> ReLU -> 1x1 conv 2C->C, groups=C, no
  bias; as released, group j mixes channels 2j and 2j+1 of the concatenation, so (even C)
  outputs 0..C/2-1 see only x and C/2..C-1 only y.
* Norms: BN in the FPN, ``GroupNorm(32, C)`` in the head (as released), so the head width must
  be a multiple of 32 (``CompileOptions`` says so in one line otherwise).
* Head ``fcos``: 4 x (conv3x3 with bias -> GN -> ReLU), FCOS init N(0, 0.01).  ``sequential``:
  the six listed ops (conv_1x1 / conv_3x3 without bias, as released).  ``dag``: first op + 5
  blocks with the same layer definitions (``concat`` with GN), only live nodes emitted.
  Layers j < share[l] have weights of their own at level l; the others are shared by levels.
* p6 = conv3x3/2(p5), p7 = conv3x3/2(relu(p6)) with bias (Kaiming-uniform a=1); a 1x1 conv
  ``bridge`` maps C -> H when they differ (``nn.Identity`` otherwise).  Predictors (shared by
  levels): ``cls_logits`` 3x3 (bias = -log(99), prior 0.01), ``bbox_pred`` 3x3 -> exp(scale_l x)
  (distances in input pixels, as the release; ``box_regression="stride"``: in units of the
  level's stride), ``centerness`` 3x3 on the classification branch.
* Resizes are bilinear with explicit target sizes (align_corners=False); p3/p4/p5 take the sizes
  of c3/c4/c5 even when the genotype never reads those levels.

state_dict keys (identical in the compiled ``Decoder`` and :class:`ReferenceDecoder`, which also
build modules in the same order, so the same seed gives the same initial weights):

* ``adapt_c2`` .. ``adapt_c5``: ``.conv.weight``, ``.bn.*``  (only levels read)
* ``fpn_block{k}`` (k = 0..6, output = pool entry 4+k): ``.op0.*``, ``.op1.*`` (absent for
  skip), ``.agg.a`` / ``.agg.b`` (sum) or ``.agg.norm.*`` / ``.agg.conv.weight`` (concat);
  op internals: SepConv ``depthwise, pointwise, norm``;
  DeformConvNormReLU ``conv.weight, conv.bias, conv.conv_offset_mask.{weight,bias}, norm``;
  ConvNormReLU ``conv, norm``.
* ``{cls,reg}_tower_p{3..7}_{j}`` (layer j with per-level weights) and
  ``{cls,reg}_tower_shared_{j}`` (shared); DAG layers: j = 0 first op, j = 1 + b block b, a
  block holding ``op0`` / ``op1`` / ``agg`` (live, non-skip parts only).
* ``p6``, ``p7``, ``bridge`` (when C != H), ``cls_logits``, ``bbox_pred``, ``centerness``,
  ``scales.{0..4}.scale``.

Export: the generated file is checked with ``torch.export.export`` and ``torch.jit.script``
(script rather than trace: the resizes take sizes from the input tensors, which script keeps
symbolic for any input size, while trace would freeze those of the example; the DCN layer is
``torchvision.ops.deform_conv2d``, a registered op both accept).  ``compile_to_module`` gives an
in-memory module (fine for training and ``torch.export``); ``torch.jit.script`` needs the file.
"""

from __future__ import annotations

from nasfcos.compiler.codegen import compile_genotype, compile_to_module, validated_genotype
from nasfcos.compiler.options import BACKBONES, CompileOptions, parse_in_channels, resolve_options
from nasfcos.compiler.plan import GENERATOR_VERSION
from nasfcos.compiler.reference import ReferenceDecoder, build_reference

__all__ = [
    "BACKBONES", "GENERATOR_VERSION", "CompileOptions", "ReferenceDecoder", "build_reference",
    "compile_genotype", "compile_to_module", "parse_in_channels", "resolve_options",
    "validated_genotype",
]
