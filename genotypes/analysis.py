"""Graph analysis of a genotype: strides, collected outputs, live paths, canonical form, hash.

The compiler, the reference interpreter and the drawing all read these records, so the
output rules of Contract 1 live in exactly one place.

FPN output rule (DESIGN.md, Contract 1).  Block outputs that no later block reads are
*collected*.  The last three collected become p5, p4, p3 (third-last -> p5 at stride 32,
last -> p3 at stride 8); every other collected output is *dangling* and is added, resized,
to each of p3..p5 before their final bilinear resize (paper eq. 1).  When fewer than three
outputs are collected, the newest block outputs not yet chosen fill in, and the three are
ordered by pool index (oldest -> p5).  Ops run at their input's resolution; a block's
output has the finer stride of its two inputs (the coarser op output is upsampled).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from nasfcos.genotypes.space import BACKBONE_LEVELS, BACKBONE_STRIDES, NUM_HEAD_BLOCKS

if TYPE_CHECKING:  # the records are built with dataclasses.replace: genotype.py imports this module
    from nasfcos.genotypes.genotype import Block, Genotype, Head


@dataclass(frozen=True)
class FPNGraph:
    """What the FPN of a genotype computes, in pool indices.

    ``strides[i]`` is the stride of pool entry ``i`` (0..3 backbone, 4.. blocks);
    ``backbone_used`` the backbone levels (0..3) that some block reads;
    ``collected`` the block outputs no later block reads (ascending);
    ``p3``, ``p4``, ``p5`` the pool indices that become those levels;
    ``dangling`` the collected outputs added to every output level.
    """

    strides: tuple[int, ...]
    backbone_used: tuple[int, ...]
    collected: tuple[int, ...]
    p3: int
    p4: int
    p5: int
    dangling: tuple[int, ...]

    @property
    def outputs(self) -> tuple[int, int, int]:
        """(p3, p4, p5) pool indices."""
        return (self.p3, self.p4, self.p5)


def fpn_graph(fpn: tuple[Block, ...]) -> FPNGraph:
    """Analyse an FPN (a validated tuple of blocks)."""
    n_in = len(BACKBONE_LEVELS)
    strides = list(BACKBONE_STRIDES)
    read: set[int] = set()
    for block in fpn:
        strides.append(min(strides[block.inputs[0]], strides[block.inputs[1]]))
        read.update(block.inputs)
    outputs = [n_in + k for k in range(len(fpn))]
    collected = [i for i in outputs if i not in read]
    chosen = list(collected[-3:])
    for i in reversed(outputs):
        if len(chosen) >= 3:
            break
        if i not in chosen:
            chosen.append(i)
    chosen.sort()
    dangling = tuple(i for i in collected if i not in chosen)
    return FPNGraph(
        strides=tuple(strides),
        backbone_used=tuple(sorted(i for i in read if i < n_in)),
        collected=tuple(collected),
        p5=chosen[0],
        p4=chosen[1],
        p3=chosen[2],
        dangling=dangling,
    )


def head_pool_names(num_blocks: int = NUM_HEAD_BLOCKS) -> tuple[str, ...]:
    """Readable names of the DAG head pool entries: p, first, b0_op0, b0_op1, b0_agg, ..."""
    names = ["p", "first"]
    for b in range(num_blocks):
        names += [f"b{b}_op0", f"b{b}_op1", f"b{b}_agg"]
    return tuple(names)


def head_live(head: Head) -> frozenset[int]:
    """Live pool indices of a DAG head (those the output depends on).

    Pool: 0 = p, 1 = first op, block b: ``2+3b`` op 0 output, ``3+3b`` op 1 output,
    ``4+3b`` aggregate.  The output is the last block's aggregate.
    """
    if head.kind != "dag":
        raise ValueError("head_live is defined for 'dag' heads only")
    out = 4 + 3 * (len(head.blocks) - 1)
    live: set[int] = set()
    stack = [out]
    while stack:
        i = stack.pop()
        if i in live:
            continue
        live.add(i)
        if i == 1:
            stack.append(0)
        elif i >= 2:
            b, slot = divmod(i - 2, 3)
            if slot == 2:
                stack += [2 + 3 * b, 3 + 3 * b]
            else:
                stack.append(head.blocks[b].inputs[slot])
    return frozenset(live)


def _canonical_head(head: Head) -> Head:
    if head.kind != "dag":
        return head
    live = head_live(head)
    referenced = {blk.inputs[j] for b, blk in enumerate(head.blocks) for j in (0, 1)
                  if 2 + 3 * b + j in live}  # the pool entries some live op reads
    blocks: list[Block] = []
    for b, blk in enumerate(head.blocks):
        op_live = [2 + 3 * b + j in live for j in (0, 1)]
        agg_live = 4 + 3 * b in live
        if not any(op_live) and not agg_live:  # a fixed filler
            blocks.append(replace(blk, inputs=(0, 0), ops=("skip", "skip"), agg="sum"))
            continue
        inputs = [blk.inputs[j] if op_live[j] else 0 for j in (0, 1)]
        ops = [blk.ops[j] if op_live[j] else "skip" for j in (0, 1)]
        agg = blk.agg if agg_live else "sum"
        # a sum whose op outputs are read only by its own aggregate is symmetric
        if agg == "sum" and agg_live and not any(2 + 3 * b + j in referenced for j in (0, 1)):
            pairs = sorted(zip(inputs, ops, strict=True))
            inputs, ops = [p[0] for p in pairs], [p[1] for p in pairs]
        blocks.append(replace(blk, inputs=(inputs[0], inputs[1]), ops=(ops[0], ops[1]), agg=agg))
    first = head.first_op if 1 in live else "skip"
    return replace(head, first_op=first, blocks=tuple(blocks))


def canonicalize(g: Genotype) -> Genotype:
    """The canonical form of ``g``: equal for genotypes that compute the same function.

    * FPN ``sum`` blocks list their two (input, op) pairs in sorted order (a*x + b*y is
      symmetric); ``concat`` is order-sensitive and kept.
    * DAG head: ops, aggregates and blocks the output does not depend on are replaced by a
      fixed filler (input 0, ``skip``, ``sum``); symmetric sums are ordered as above.
    ``name`` and ``meta`` are kept.
    """
    fpn = []
    for blk in g.fpn:
        if blk.agg == "sum":
            pairs = sorted(zip(blk.inputs, blk.ops, strict=True))
            blk = replace(blk, inputs=(pairs[0][0], pairs[1][0]), ops=(pairs[0][1], pairs[1][1]))
        fpn.append(blk)
    return replace(g, fpn=tuple(fpn), head=_canonical_head(g.head))


def canonical_json(g: Genotype) -> str:
    """Compact, key-sorted JSON of the canonical architecture (no name, no meta)."""
    doc = canonicalize(g).to_dict(with_meta=False)
    doc.pop("name", None)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def content_hash(g: Genotype) -> str:
    """sha256 (hex) of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(g).encode("ascii")).hexdigest()
