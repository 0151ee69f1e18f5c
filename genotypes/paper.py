"""The authors' release's numeric list form, converted losslessly to and from :class:`Genotype`.

The release writes a searched architecture as (``configs/search/R_50_NAS_head.yaml``)::

    [[[3,3,4,4,1]], [[3,3,4,4,1]], [[4,3,4,3,1]], [[1,3,4,3,1]],
     [[5,3,4,4,1]], [[4,7,4,4,1]], [[7,2,4,4,1]], [0], [5,1,5,0,4,4]]

* entries 0..6: FPN blocks ``[in1, in2, op1, op2, agg]`` (each optionally wrapped in a
  one-element list, as the release does), op ids of the paper's Table 1, agg 0 = sum, 1 = concat;
* entry 7 (optional): the sharing index, ``[s]`` for all levels or ``[s3, s4, s5, s6, s7]``;
  absent means FCOS's standard head with everything shared (``[0]``);
* entry 8 (optional): the head, six head op ids (``sequential``) or, for the paper's DAG head,
  ``[first_op, in1, in2, op1, op2, agg, ... x5]`` (26 ids).  Absent means kind ``fcos``.
"""

from __future__ import annotations

from typing import Any

from nasfcos.errors import GenotypeError
from nasfcos.genotypes.genotype import DEFAULT_NAME, Block, Genotype, Head, _int, parse_genotype
from nasfcos.genotypes.space import (
    AGGS,
    FORMAT,
    FPN_OPS,
    HEAD_OPS,
    NUM_FPN_BLOCKS,
    NUM_HEAD_BLOCKS,
    NUM_LEVELS,
    SEQUENTIAL_HEAD_LAYERS,
)


def _lookup(value: Any, table: tuple[str, ...], path: str, what: str) -> str:
    v = _int(value, path)
    if not 0 <= v < len(table):
        raise GenotypeError(f"{path}: {what} id {v} is out of range (0..{len(table) - 1})")
    return table[v]


def _block_from_ids(ids: Any, path: str, ops: tuple[str, ...], op_what: str) -> dict[str, Any]:
    if isinstance(ids, list) and len(ids) == 1 and isinstance(ids[0], list):
        ids, path = ids[0], f"{path}[0]"
    if not isinstance(ids, list) or len(ids) != 5:
        raise GenotypeError(f"{path}: expected [in1, in2, op1, op2, agg]")
    return {
        "inputs": [_int(ids[0], f"{path}[0]"), _int(ids[1], f"{path}[1]")],
        "ops": [_lookup(ids[2], ops, f"{path}[2]", op_what), _lookup(ids[3], ops, f"{path}[3]", op_what)],
        "agg": _lookup(ids[4], AGGS, f"{path}[4]", "aggregation"),
    }


def from_paper_list(
    lst: Any, *, name: str = DEFAULT_NAME, meta: dict[str, Any] | None = None
) -> Genotype:
    """Build a validated :class:`Genotype` from the release's numeric list form."""
    if not isinstance(lst, list) or len(lst) not in (NUM_FPN_BLOCKS, NUM_FPN_BLOCKS + 1, NUM_FPN_BLOCKS + 2):
        raise GenotypeError("list: expected 7 FPN blocks, then optionally [sharing index] and [head op ids]")
    fpn = [_block_from_ids(lst[k], f"list[{k}]", FPN_OPS, "op") for k in range(NUM_FPN_BLOCKS)]
    share: Any = [0] * NUM_LEVELS
    if len(lst) > NUM_FPN_BLOCKS:
        s = lst[NUM_FPN_BLOCKS]
        if isinstance(s, int) and not isinstance(s, bool):
            s = [s]
        if not isinstance(s, list) or len(s) not in (1, NUM_LEVELS):
            raise GenotypeError(f"list[{NUM_FPN_BLOCKS}]: expected the sharing index as [s] or 5 values")
        share = [_int(v, f"list[{NUM_FPN_BLOCKS}][{i}]") for i, v in enumerate(s)]
        if len(share) == 1:
            share = share * NUM_LEVELS
    head: dict[str, Any] = {"kind": "fcos"}
    if len(lst) > NUM_FPN_BLOCKS + 1:
        ids = lst[NUM_FPN_BLOCKS + 1]
        path = f"list[{NUM_FPN_BLOCKS + 1}]"
        if not isinstance(ids, list) or len(ids) not in (SEQUENTIAL_HEAD_LAYERS, 1 + 5 * NUM_HEAD_BLOCKS):
            raise GenotypeError(f"{path}: expected 6 head op ids or 26 DAG head ids")
        if len(ids) == SEQUENTIAL_HEAD_LAYERS:
            head = {
                "kind": "sequential",
                "layers": [_lookup(v, HEAD_OPS, f"{path}[{i}]", "head op") for i, v in enumerate(ids)],
            }
        else:
            head = {
                "kind": "dag",
                "first_op": _lookup(ids[0], HEAD_OPS, f"{path}[0]", "head op"),
                "blocks": [
                    _block_from_ids(ids[1 + 5 * b : 6 + 5 * b], f"{path}[{1 + 5 * b}:{6 + 5 * b}]", HEAD_OPS, "head op")
                    for b in range(NUM_HEAD_BLOCKS)
                ],
            }
    doc: dict[str, Any] = {"format": FORMAT, "name": name, "fpn": fpn, "head": head, "share": share}
    if meta:
        doc["meta"] = meta
    return parse_genotype(doc)


def to_paper_list(g: Genotype) -> list[Any]:
    """The release's list form of ``g`` (inverse of :func:`from_paper_list`): 7 entries for
    FCOS's standard head with everything shared (as the release's ``*_densebox`` configs), else
    the 7 blocks, ``[share]`` and the head ids."""
    out: list[Any] = [[block_ids(b, FPN_OPS)] for b in g.fpn]
    if g.head.kind == "fcos" and not any(g.share):
        return out  # the release's densebox configs: the 7 FPN blocks only
    out.append([g.share[0]] if len(set(g.share)) == 1 else list(g.share))
    if g.head.kind != "fcos":
        out.append(head_ids(g.head))
    return out


def block_ids(b: Block, ops: tuple[str, ...]) -> list[int]:
    """``[in1, in2, op1, op2, agg]`` of block ``b`` as ids (``ops``: its op table)."""
    return [b.inputs[0], b.inputs[1], ops.index(b.ops[0]), ops.index(b.ops[1]), AGGS.index(b.agg)]


def head_ids(head: Head) -> list[int]:
    """The ids of a ``sequential`` head (its six ops) or a ``dag`` head (first op, then five
    blocks); none for ``fcos``."""
    if head.kind != "dag":
        return [HEAD_OPS.index(op) for op in head.layers]
    return [HEAD_OPS.index(head.first_op or "skip")] + [i for b in head.blocks for i in block_ids(b, HEAD_OPS)]
