"""The NAS-FCOS search space, defined once.

Everything that enumerates choices (validation, sampling, the controller's decision
sequence, the compiler's op tables) reads these tables; nothing else hard-codes them.

Ids follow the paper's Table 1 and the authors' release:

* FPN ops 0..4: ``sep_conv_3x3``, ``sep_conv_3x3_dil3``, ``sep_conv_5x5_dil6``, ``skip``,
  ``deform_conv_3x3``;
* aggregations 0..1: ``sum`` (learnable per-channel ``a*x + b*y``), ``concat``
  (concatenation followed by a 1x1 convolution);
* head ops 0..5: ``conv_1x1``, ``conv_3x3``, ``sep_conv_3x3``, ``sep_conv_3x3_dil3``, ``skip``,
  ``deform_conv_3x3``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FORMAT = "nasfcos-genotype/1"

FPN_OPS: tuple[str, ...] = (
    "sep_conv_3x3",
    "sep_conv_3x3_dil3",
    "sep_conv_5x5_dil6",
    "skip",
    "deform_conv_3x3",
)
AGGS: tuple[str, ...] = ("sum", "concat")
HEAD_OPS: tuple[str, ...] = (
    "conv_1x1",
    "conv_3x3",
    "sep_conv_3x3",
    "sep_conv_3x3_dil3",
    "skip",
    "deform_conv_3x3",
)
HEAD_KINDS: tuple[str, ...] = ("fcos", "sequential", "dag")

#: Backbone levels in the FPN pool: indices 0..3 are c2, c3, c4, c5.
BACKBONE_LEVELS: tuple[str, ...] = ("c2", "c3", "c4", "c5")
BACKBONE_STRIDES: tuple[int, ...] = (4, 8, 16, 32)
NUM_FPN_BLOCKS = 7
#: Output levels of the decoder and their strides.
OUTPUT_LEVELS: tuple[str, ...] = ("p3", "p4", "p5", "p6", "p7")
OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32, 64, 128)
NUM_LEVELS = len(OUTPUT_LEVELS)

#: Layers of FCOS's standard tower (kind ``fcos``).
FCOS_HEAD_LAYERS = 4
#: Layers of the released sequential head (kind ``sequential``).
SEQUENTIAL_HEAD_LAYERS = 6
#: Blocks of the paper's DAG head (kind ``dag``), after its first op.
NUM_HEAD_BLOCKS = 5


def fpn_pool_size(block: int) -> int:
    """Number of pool entries a (0-based) FPN block may read: 4 backbone levels + earlier blocks."""
    return len(BACKBONE_LEVELS) + block


def head_pool_size(block: int) -> int:
    """Number of pool entries a (0-based) DAG head block may read.

    Pool: 0 = the level's feature p, 1 = the first op's output, then per earlier
    block its two op outputs and its aggregate (3 entries each).
    """
    return 2 + 3 * block


def head_num_layers(kind: str) -> int:
    """Number of head layers that the sharing index counts, per head kind.

    ``fcos``: 4 convs; ``sequential``: 6 ops; ``dag``: first op + 5 blocks = 6.
    ``share[l]`` ranges over ``0..head_num_layers(kind)`` (the upper bound means "nothing shared").
    """
    if kind == "fcos":
        return FCOS_HEAD_LAYERS
    if kind == "sequential":
        return SEQUENTIAL_HEAD_LAYERS
    if kind == "dag":
        return 1 + NUM_HEAD_BLOCKS
    raise ValueError(f"unknown head kind {kind!r}")


DecisionKind = Literal["index", "fpn_op", "agg", "head_op", "share"]


@dataclass(frozen=True)
class Decision:
    """One choice in the controller's decision sequence.

    ``name`` is the JSON path it fills (``fpn[2].inputs[0]``); ``num_choices`` the number of
    valid values ``0..num_choices-1`` at this position (pool indices grow with the block).
    """

    name: str
    kind: DecisionKind
    num_choices: int


def _block_decisions(path: str, pool: int, op_kind: str, num_ops: int) -> list[Decision]:
    """Input 1, input 2, op 1, op 2, aggregation of the block at ``path`` (FPN or DAG head)."""
    return [
        Decision(f"{path}.inputs[0]", "index", pool),
        Decision(f"{path}.inputs[1]", "index", pool),
        Decision(f"{path}.ops[0]", op_kind, num_ops),
        Decision(f"{path}.ops[1]", op_kind, num_ops),
        Decision(f"{path}.agg", "agg", len(AGGS)),
    ]


def decisions(head_kind: str = "dag") -> tuple[Decision, ...]:
    """The full decision sequence of the search space, in controller order.

    FPN: 7 x (input 1, input 2, op 1, op 2, aggregation); then the head
    (``dag``: first op + 5 x (input 1, input 2, op 1, op 2, aggregation); ``sequential``: 6 ops;
    ``fcos``: nothing); then 5 sharing indices (one per level p3..p7).
    """
    out: list[Decision] = []
    for k in range(NUM_FPN_BLOCKS):
        out += _block_decisions(f"fpn[{k}]", fpn_pool_size(k), "fpn_op", len(FPN_OPS))
    if head_kind == "dag":
        out.append(Decision("head.first_op", "head_op", len(HEAD_OPS)))
        for b in range(NUM_HEAD_BLOCKS):
            out += _block_decisions(f"head.blocks[{b}]", head_pool_size(b), "head_op", len(HEAD_OPS))
    elif head_kind == "sequential":
        out += [
            Decision(f"head.layers[{i}]", "head_op", len(HEAD_OPS))
            for i in range(SEQUENTIAL_HEAD_LAYERS)
        ]
    elif head_kind != "fcos":
        raise ValueError(f"unknown head kind {head_kind!r}")
    n_share = head_num_layers(head_kind) + 1
    out += [Decision(f"share[{lvl}]", "share", n_share) for lvl in range(NUM_LEVELS)]
    return tuple(out)


def max_choices(head_kind: str = "dag") -> int:
    """Largest ``num_choices`` over the decision sequence (the controller's logit width)."""
    return max(d.num_choices for d in decisions(head_kind))
