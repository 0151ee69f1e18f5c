"""Genotype -> plain records for the templates: graph analysis, dead-path elimination, naming.

Everything that decides *what* the generated file contains lives here; the templates only
print the records.  Only a :class:`~nasfcos.genotypes.Genotype` reaches a record, and it is
valid by type (whitelisted names, plain ints in range: its constructor checks them); op and
aggregation names are mapped through the emitter tables below.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

from nasfcos.compiler.options import CompileOptions, option_flags, options_context
from nasfcos.genotypes import (
    BACKBONE_LEVELS,
    BACKBONE_STRIDES,
    OUTPUT_LEVELS,
    OUTPUT_STRIDES,
    PAPER_GENOTYPES,
    Genotype,
    fpn_graph,
    head_live,
    head_pool_names,
    load_paper_genotype,
)

#: Version of the code generator, printed in every generated file's header.
GENERATOR_VERSION = "2.0"

# --- constructor calls: values the template prints ----------------------------------------
@dataclass(frozen=True)
class Name:
    """A name of the generated scope, printed bare: the widths ``c`` (FPN) and ``h`` (head)."""

    text: str

    def __str__(self) -> str:
        return self.text


C, H = Name("c"), Name("h")


def _source(value: Any) -> str:
    """Python source of an argument value (a Name, int, bool or whitelisted string)."""
    return json.dumps(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Call:
    """A layer constructor call as values: class name, positional and keyword arguments.
    ``str()`` is its Python source; :meth:`build` makes the layer from a module's classes."""

    cls: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        parts = [_source(a) for a in self.args] + [f"{k}={_source(v)}" for k, v in self.kwargs]
        return f"{self.cls}({', '.join(parts)})"

    def build(self, namespace: Any, names: dict[str, Any]) -> Any:
        """``namespace.<cls>(...)`` with each :class:`Name` looked up in ``names``."""
        def value(v: Any) -> Any:
            return names[v.text] if isinstance(v, Name) else v

        return getattr(namespace, self.cls)(*map(value, self.args), **{k: value(v) for k, v in self.kwargs})


# --- emitter tables: op name -> constructor call; None = identity (no module) ---------------
FPN_OP_EMITTERS: dict[str, Call | None] = {
    "sep_conv_3x3": Call("SepConv", (C, 3), (("dilation", 1), ("norm", "bn"))),
    "sep_conv_3x3_dil3": Call("SepConv", (C, 3), (("dilation", 3), ("norm", "bn"))),
    "sep_conv_5x5_dil6": Call("SepConv", (C, 5), (("dilation", 6), ("norm", "bn"))),
    "skip": None,
    "deform_conv_3x3": Call("DeformConvNormReLU", (C,), (("norm", "bn"),)),
}
HEAD_OP_EMITTERS: dict[str, Call | None] = {
    "conv_1x1": Call("ConvNormReLU", (H, H, 1), (("norm", "gn"),)),
    "conv_3x3": Call("ConvNormReLU", (H, H, 3), (("norm", "gn"),)),
    "sep_conv_3x3": Call("SepConv", (H, 3), (("dilation", 1), ("norm", "gn"))),
    "sep_conv_3x3_dil3": Call("SepConv", (H, 3), (("dilation", 3), ("norm", "gn"))),
    "skip": None,
    "deform_conv_3x3": Call("DeformConvNormReLU", (H,), (("norm", "gn"),)),
}
#: FCOS's standard tower layer (kind ``fcos``): conv3x3 with bias -> GN -> ReLU.
FCOS_TOWER_EMITTER = Call("ConvNormReLU", (H, H, 3), (("norm", "gn"), ("bias", True)))
FPN_AGG_EMITTERS: dict[str, Call] = {
    "sum": Call("WeightedSum", (C,)),
    "concat": Call("ConcatReduce", (C,), (("norm", "bn"),)),
}
HEAD_AGG_EMITTERS: dict[str, Call] = {
    "sum": Call("WeightedSum", (H,)),
    "concat": Call("ConcatReduce", (H,), (("norm", "gn"),)),
}
#: Layer classes that build their norm through ``make_norm``.
_NORM_USERS = frozenset({"SepConv", "DeformConvNormReLU", "ConvNormReLU", "ConcatReduce"})
BRANCHES: tuple[str, str] = ("cls", "reg")


# --- records ------------------------------------------------------------------------------
Item = TypeVar("Item")


@dataclass(frozen=True)
class Part:
    """One keyword of a ``Block(...)`` container: ``key=expr``."""

    key: str
    expr: Call


@dataclass(frozen=True)
class ModuleDef:
    """``self.<name> = <expr>`` or, with ``parts``, ``self.<name> = Block(k=v, ...)``."""

    name: str
    comment: str
    expr: Call | None = None
    parts: tuple[Part, ...] = ()


@dataclass(frozen=True)
class Stmt:
    """``<target> = <expr>  # <comment>``; ``units``: the latency-table units it runs
    (:mod:`nasfcos.search.latency`; head units without their level's stride)."""

    target: str
    expr: str
    comment: str = ""
    units: tuple[str, ...] = ()


@dataclass(frozen=True)
class Group(Generic[Item]):
    """A commented group of records: module definitions (``Decoder.__init__``) or statements
    (``Decoder.forward``)."""

    comment: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class TowerMethod:
    """A generated ``Decoder`` method computing one head branch at one or more levels."""

    name: str
    doc: str
    arg: str
    stmts: tuple[Stmt, ...]
    result: str


@dataclass(frozen=True)
class LevelHead:
    """Which tower methods level ``level`` (p3..p7, index 0..4) uses."""

    level: str
    index: int
    cls_tower: str
    reg_tower: str


@dataclass(frozen=True)
class Plan:
    """Everything the model template prints."""

    generator_version: str
    name: str
    genotype_hash: str
    genotype_literal: str
    head_kind: str
    regenerate: str
    fpn_channels: int
    head_channels: int
    num_classes: int
    in_channels: tuple[int, int, int, int]
    detector: bool
    options: dict[str, Any]
    uses: frozenset[str]
    module_groups: tuple[Group[ModuleDef], ...]
    fcos_tower_convs: tuple[str, ...]
    fpn_sections: tuple[Group[Stmt], ...]
    towers: tuple[TowerMethod, ...]
    levels: tuple[LevelHead, ...]

    def units(self) -> Counter[str]:
        """How many times each latency-table unit runs for one image (see
        :mod:`nasfcos.search.latency`): read from the statements this plan prints."""
        units: Counter[str] = Counter(u for sec in self.fpn_sections for st in sec.items for u in st.units)
        units["p6p7"] += 1
        towers = {t.name: t for t in self.towers}
        for lv in self.levels:
            s = OUTPUT_STRIDES[lv.index]
            units[f"predict/s{s}"] += 1
            if self.head_channels != self.fpn_channels:
                units[f"bridge/s{s}"] += 1
            for name in (lv.cls_tower, lv.reg_tower):
                units.update(f"{u}/s{s}" for st in towers[name].stmts for u in st.units)
        return units

    def context(self) -> dict[str, Any]:
        """The template context (plain values and records)."""
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("options", "uses")}
        return {**plain, **self.options, "uses": {n: (n in self.uses) for n in _ALL_USES}}


_ALL_USES = (
    "Adapter", "SepConv", "DeformConvNormReLU", "ConvNormReLU", "WeightedSum", "ConcatReduce",
    "Block", "make_norm",
)


# --- helpers -------------------------------------------------------------------------------
def _ctor(call: Call, uses: set[str]) -> Call:
    uses.add(call.cls)
    return call


def _py_literal(value: Any, indent: int, prefix: int = 11) -> str:
    """A Python literal of nested dicts/lists of ints and whitelisted strings, lines <= 100 chars.

    JSON text of these values is valid Python (double-quoted ASCII strings, ints); ``prefix`` is
    the width of what precedes the value on its line (``GENOTYPE = `` or a dict key).
    """
    flat = json.dumps(value, ensure_ascii=True, separators=(", ", ": "))
    if 4 * indent + prefix + len(flat) + 1 <= 100 or not isinstance(value, (dict, list)) or not value:
        return flat
    pad = "    " * (indent + 1)
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            key = json.dumps(str(k)) + ": "
            items.append(f"{pad}{key}{_py_literal(v, indent + 1, len(key))},")
        return "{\n" + "\n".join(items) + "\n" + "    " * indent + "}"
    items = [f"{pad}{_py_literal(v, indent + 1, 0)}," for v in value]
    return "[\n" + "\n".join(items) + "\n" + "    " * indent + "]"


def _literal(g: Genotype) -> str:
    """The genotype as a Python literal (no meta)."""
    return _py_literal(g.to_dict(with_meta=False), 0)


def genotype_source(g: Genotype) -> str:
    """How ``nasfcos compile`` is given ``g``: its shipped name when it is a shipped genotype
    (same name and hash), else a placeholder for the user's genotype JSON file."""
    for shipped in PAPER_GENOTYPES:
        paper = load_paper_genotype(shipped)
        if paper.name == g.name and paper.hash() == g.hash():
            return shipped
    return f"<genotype JSON of {g.name}>"


def regenerate_command(source: str, options: CompileOptions) -> str:
    """The command line that regenerates the file (no paths, so byte-identical everywhere);
    ``source`` as :func:`genotype_source` gives it."""
    parts = [f"nasfcos compile {source} -o model.py", f"--fpn-channels {options.fpn_channels}"]
    if options.head_channels is not None:
        parts.append(f"--head-channels {options.head_channels}")
    parts.append(f"--num-classes {options.num_classes}")
    parts.append("--in-channels " + ",".join(str(c) for c in options.in_channels))
    if options.detector:
        parts.append(f"--detector --backbone {options.backbone}")
    parts += option_flags(options)
    return " ".join(parts)


# --- the FPN -------------------------------------------------------------------------------
def _fpn(g: Genotype, uses: set[str]) -> tuple[list[Group[ModuleDef]], list[Group[Stmt]]]:
    graph = fpn_graph(g.fpn)
    strides = graph.strides
    adapters: list[ModuleDef] = []
    adapt_stmts: list[Stmt] = []
    for lvl in graph.backbone_used:
        name = BACKBONE_LEVELS[lvl]
        adapters.append(ModuleDef(f"adapt_{name}", f"{name}, stride {BACKBONE_STRIDES[lvl]}",
                                  expr=Call("Adapter", (Name(f"in_channels[{lvl}]"), C))))
        adapt_stmts.append(Stmt(f"x{lvl}", f"self.adapt_{name}(features[{lvl}])",
                                f"pool {lvl}: {name}, stride {BACKBONE_STRIDES[lvl]}", (f"adapter/{name}",)))
    uses.add("Adapter")
    sections = [Group("backbone adapters: 1x1 conv + BN + ReLU to the FPN width", tuple(adapt_stmts))]
    blocks: list[ModuleDef] = []
    for k, blk in enumerate(g.fpn):
        out = len(BACKBONE_LEVELS) + k
        ins = blk.inputs
        s_out = min(strides[ins[0]], strides[ins[1]])
        finer = ins[0] if strides[ins[0]] <= strides[ins[1]] else ins[1]
        parts: list[Part] = []
        stmts: list[Stmt] = []
        args: list[str] = []
        for j in (0, 1):
            emitted = FPN_OP_EMITTERS[blk.ops[j]]
            expr, units = f"x{ins[j]}", []
            if emitted is not None:
                parts.append(Part(f"op{j}", _ctor(emitted, uses)))
                expr = f"self.fpn_block{k}.op{j}({expr})"
                units.append(f"fpn_op/{blk.ops[j]}/s{strides[ins[j]]}")
            if strides[ins[j]] != s_out:
                expr = f"resize({expr}, like=x{finer})"
                units.append(f"resize/s{strides[ins[j]]}/s{s_out}")
            if expr == f"x{ins[j]}":
                args.append(expr)
            else:
                stmts.append(Stmt(f"x{out}_{j}", expr, units=tuple(units)))
                args.append(f"x{out}_{j}")
        parts.append(Part("agg", _ctor(FPN_AGG_EMITTERS[blk.agg], uses)))
        uses.add("Block")
        stmts.append(Stmt(f"x{out}", f"self.fpn_block{k}.agg({args[0]}, {args[1]})",
                          units=(f"fpn_agg/{blk.agg}/s{s_out}",)))
        desc = f"{blk.agg}({blk.ops[0]}(x{ins[0]}), {blk.ops[1]}(x{ins[1]}))"
        blocks.append(ModuleDef(f"fpn_block{k}", f"x{out} = {desc}", parts=tuple(parts)))
        sections.append(Group(f"block {k} -> x{out}, stride {s_out}: {desc}", tuple(stmts)))

    # outputs (Contract 1): p5, p4, p3 from the chosen entries, dangling added (paper eq. 1)
    out_stmts: list[Stmt] = []
    for level, idx, feat in (("p3", graph.p3, 1), ("p4", graph.p4, 2), ("p5", graph.p5, 3)):
        terms, units = [f"x{idx}"], []
        for d in graph.dangling:
            terms.append(f"x{d}" if strides[d] == strides[idx] else f"resize(x{d}, like=x{idx})")
            units += [] if strides[d] == strides[idx] else [f"resize/s{strides[d]}/s{strides[idx]}"]
            units.append(f"add/s{strides[idx]}")
        expr = " + ".join(terms)
        target_stride = BACKBONE_STRIDES[feat]
        resize = (f"resize/s{strides[idx]}/s{target_stride}",)
        if strides[idx] == target_stride:
            out_stmts.append(Stmt(level, expr, units=tuple(units)))
        elif len(terms) == 1:
            out_stmts.append(Stmt(level, f"resize({expr}, like=features[{feat}])",
                                  f"stride {strides[idx]} -> {target_stride}", resize))
        else:
            out_stmts.append(Stmt(level, expr, units=tuple(units)))
            out_stmts.append(Stmt(level, f"resize({level}, like=features[{feat}])",
                                  f"stride {strides[idx]} -> {target_stride}", resize))
    dangling = ", ".join(f"x{d}" for d in graph.dangling)
    comment = f"outputs: p5 <- x{graph.p5}, p4 <- x{graph.p4}, p3 <- x{graph.p3}"
    if dangling:
        comment += f"; dangling {dangling} added to each (paper eq. 1)"
    sections.append(Group(comment, tuple(out_stmts)))
    groups = [
        Group("backbone adapters (only the levels the genotype reads)", tuple(adapters)),
        Group("FPN blocks: pool entry 4 + k is block k's output (skip ops hold no module)",
              tuple(blocks)),
    ]
    return groups, sections


# --- the head ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layer:
    """One head layer (sharing-index position): a single op or a DAG block's live parts."""

    op: Call | None = None                     # the constructor of a single-op layer
    parts: tuple[tuple[str, Call], ...] = ()   # DAG block parts (key, constructor)
    desc: str = ""

    @property
    def has_module(self) -> bool:
        return self.op is not None or bool(self.parts)


def _head_layers(g: Genotype) -> tuple[list[_Layer], frozenset[int]]:
    head = g.head
    if head.kind == "fcos":
        return [_Layer(op=FCOS_TOWER_EMITTER)] * 4, frozenset()
    if head.kind == "sequential":
        return [_Layer(op=HEAD_OP_EMITTERS[op]) for op in head.layers], frozenset()
    live = head_live(head)
    layers = [_Layer(op=HEAD_OP_EMITTERS[head.first_op] if 1 in live else None, desc="first op")]
    for b, blk in enumerate(head.blocks):
        parts: list[tuple[str, Call]] = []
        for j in (0, 1):
            if 2 + 3 * b + j in live:
                emitted = HEAD_OP_EMITTERS[blk.ops[j]]
                if emitted is not None:
                    parts.append((f"op{j}", emitted))
        if 4 + 3 * b in live:
            parts.append(("agg", HEAD_AGG_EMITTERS[blk.agg]))
        layers.append(_Layer(parts=tuple(parts), desc=f"block {b}"))
    return layers, live


def _owner(branch: str, level: str, j: int, share: int) -> str:
    return f"{branch}_tower_{level}_{j}" if j < share else f"{branch}_tower_shared_{j}"


def _tower_body(g: Genotype, layers: list[_Layer], live: frozenset[int], branch: str,
                level: str, share: int) -> tuple[str, list[Stmt], str]:
    """(argument name, statements, result variable) of one branch's tower at one level."""
    head = g.head
    if head.kind in ("fcos", "sequential"):
        ops = head.layers if head.kind == "sequential" else ("conv_3x3",) * len(layers)
        unit = "head_op/{}" if head.kind == "sequential" else "head_op/fcos_{}"
        stmts = []
        for j, layer in enumerate(layers):
            if layer.op is not None:
                stmts.append(Stmt("x", f"self.{_owner(branch, level, j, share)}(x)", str(ops[j]),
                                  (unit.format(ops[j]),)))
        return "x", stmts, "x"
    names = head_pool_names(len(head.blocks))
    var: dict[int, str] = {0: "p"}
    stmts = []
    if 1 in live:
        if layers[0].op is None:
            var[1] = var[0]
        else:
            stmts.append(Stmt("first", f"self.{_owner(branch, level, 0, share)}(p)", str(head.first_op),
                              (f"head_op/{head.first_op}",)))
            var[1] = "first"
    for b, blk in enumerate(head.blocks):
        owner = _owner(branch, level, 1 + b, share)
        for j in (0, 1):
            slot = 2 + 3 * b + j
            if slot not in live:
                continue
            src = var[blk.inputs[j]]
            if blk.ops[j] == "skip":
                var[slot] = src
            else:
                stmts.append(Stmt(names[slot], f"self.{owner}.op{j}({src})", str(blk.ops[j]),
                                  (f"head_op/{blk.ops[j]}",)))
                var[slot] = names[slot]
        slot = 4 + 3 * b
        if slot in live:
            stmts.append(Stmt(names[slot], f"self.{owner}.agg({var[slot - 2]}, {var[slot - 1]})",
                              str(blk.agg), (f"head_agg/{blk.agg}",)))
            var[slot] = names[slot]
    return "p", stmts, var[4 + 3 * (len(head.blocks) - 1)]


def _head(g: Genotype, uses: set[str]) -> tuple[list[Group[ModuleDef]], list[TowerMethod], list[LevelHead], list[str]]:
    layers, live = _head_layers(g)
    share = g.share
    groups: list[Group[ModuleDef]] = []
    fcos_convs: list[str] = []
    for branch in BRANCHES:
        mods: list[ModuleDef] = []
        for j, layer in enumerate(layers):
            if not layer.has_module:
                continue
            owners = [(lvl, f"{branch}_tower_{lvl}_{j}") for lvl, s in zip(OUTPUT_LEVELS, share, strict=True) if j < s]
            if any(j >= s for s in share):
                owners.append(("shared", f"{branch}_tower_shared_{j}"))
            for where, name in owners:
                comment = f"layer {j}, {where}" + (f": {layer.desc}" if layer.desc else "")
                if layer.op is not None:
                    mods.append(ModuleDef(name, comment, expr=_ctor(layer.op, uses)))
                    if g.head.kind == "fcos":
                        fcos_convs.append(f"self.{name}.conv")
                else:
                    uses.add("Block")
                    mods.append(ModuleDef(name, comment, parts=tuple(
                        Part(key, _ctor(emitted, uses)) for key, emitted in layer.parts)))
        what = "classification" if branch == "cls" else "box regression"
        groups.append(Group(
            f"{what} tower ({g.head.kind} head): layers before share[l] are per level",
            tuple(mods)))
    towers: dict[str, TowerMethod] = {}
    per_level: dict[str, dict[str, str]] = {}
    for li, (level, s) in enumerate(zip(OUTPUT_LEVELS, share, strict=True)):
        per_level[level] = {}
        for branch in BRANCHES:
            arg, stmts, result = _tower_body(g, layers, live, branch, level, s)
            own = any(f"_tower_{level}_" in st.expr for st in stmts)
            name = f"{branch}_tower_{level}" if own else f"{branch}_tower"
            what = "Classification" if branch == "cls" else "Box regression"
            if own:
                doc = (f"{what} tower at {level} (stride {OUTPUT_STRIDES[li]}): "
                       f"layers before {s} have weights of their own here, later ones are shared.")
            else:
                doc = f"{what} tower with shared weights."
            if name not in towers:
                towers[name] = TowerMethod(name, doc, arg, tuple(stmts), result)
            per_level[level][branch] = name
    ordered = sorted(towers.values(), key=lambda t: (t.name.split("_")[0] != "cls", t.name))
    levels = [LevelHead(level, i, per_level[level]["cls"], per_level[level]["reg"])
              for i, level in enumerate(OUTPUT_LEVELS)]
    return groups, ordered, levels, fcos_convs


def build_plan(g: Genotype, options: CompileOptions) -> Plan:
    """The records of the file compiled from genotype ``g`` with ``options``."""
    uses: set[str] = set()
    fpn_groups, sections = _fpn(g, uses)
    head_groups, towers, levels, fcos_convs = _head(g, uses)
    if uses & _NORM_USERS:
        uses.add("make_norm")
    return Plan(
        generator_version=GENERATOR_VERSION,
        name=g.name,
        genotype_hash=g.hash(),
        genotype_literal=_literal(g),
        head_kind=g.head.kind,
        regenerate=regenerate_command(genotype_source(g), options),
        fpn_channels=options.fpn_channels,
        head_channels=options.resolved_head_channels,
        num_classes=options.num_classes,
        in_channels=options.in_channels,
        detector=options.detector,
        options=options_context(options),
        uses=frozenset(uses),
        module_groups=tuple(fpn_groups + head_groups),
        fcos_tower_convs=tuple(fcos_convs),
        fpn_sections=tuple(sections),
        towers=tuple(towers),
        levels=tuple(levels),
    )
