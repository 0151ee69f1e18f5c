"""The search controller: an LSTM that emits the whole decision sequence of the search space.

The sequence is read from :func:`nasfcos.genotypes.decisions` (never restated here): for the
paper's DAG head that is 7 FPN blocks x (input 1, input 2, op 1, op 2, aggregation), the
head's first op and 5 blocks x (input 1, input 2, op 1, op 2, aggregation), then 5 sharing
indices -- 66 decisions.

Architecture (after the ancestor code NAS-FCOS builds on, Nekrasov et al. 2019,
``DrSleep/nas-segm-pytorch`` ``src/rl/micro_controllers.py``, itself after ENAS):

* a stacked LSTM (2 layers, hidden 100) started from a learned input ``g_emb``;
* decisions are grouped by what they choose (``fpn_index``, ``fpn_op``, ``agg``,
  ``head_op``, ``head_index``, ``share``); each group has one linear classifier of the
  group's widest choice count, and positions with fewer valid choices (pool indices grow
  with the block) get the surplus logits masked to ``-inf``, so every sample is a valid
  genotype;
* unlike the ancestor (which feeds the LSTM its own output, so later decisions never see
  earlier ones), the next input is an embedding of the choice just made (ENAS), so the
  policy is autoregressive;
* every parameter is initialised uniformly in ``[-0.1, 0.1]`` (ancestor ``reset_parameters``).

Sampling runs the LSTM step by step for a whole batch; :meth:`Controller.evaluate` re-scores
given choice sequences with teacher forcing in one LSTM call.  Both give per-sequence
log-probabilities (sum over decisions) and entropies (sum of the masked per-decision
entropies), in nats.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nasfcos.genotypes import Decision, Genotype, decisions, genotype_from_choices


@dataclass(frozen=True)
class ControllerConfig:
    """Controller shape.  Defaults from Nekrasov et al.'s ``MicroController`` (see module doc)."""

    head_kind: str = "dag"  # search space: "dag" (the paper's), "sequential" or "fcos"
    hidden_size: int = 100  # ancestor: hidden_size=100
    num_layers: int = 2  # ancestor: num_lstm_layers=2
    init_range: float = 0.1  # ancestor: reset_parameters, uniform(-0.1, 0.1)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ``n`` intra-op torch threads (the controller is tiny: on a busy
    machine more threads make its updates ~10x slower, not faster)."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


def decision_group(d: Decision) -> str:
    """Which classifier/embedding a decision uses: its kind, with pool indices split by section."""
    if d.kind == "index":
        return "fpn_index" if d.name.startswith("fpn") else "head_index"
    return d.kind


@dataclass
class Samples:
    """A batch of sampled decision sequences.

    ``choices [B, T]`` int64, ``log_probs [B]`` and ``entropy [B]`` float32 (nats, summed over
    the T decisions), computed under the controller that sampled them (no gradient).
    """

    choices: Tensor
    log_probs: Tensor
    entropy: Tensor

    def __len__(self) -> int:
        return int(self.choices.shape[0])


class Controller(nn.Module):
    """LSTM policy over the decision sequence of ``decisions(cfg.head_kind)``."""

    def __init__(self, cfg: ControllerConfig = ControllerConfig(), *, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.decisions: tuple[Decision, ...] = decisions(cfg.head_kind)
        groups: dict[str, int] = {}
        for d in self.decisions:
            g = decision_group(d)
            groups[g] = max(groups.get(g, 0), d.num_choices)
        self.group_names: tuple[str, ...] = tuple(groups)
        self.group_width: dict[str, int] = groups
        h = cfg.hidden_size
        self.g_emb = nn.Parameter(torch.zeros(1, 1, h))
        self.lstm = nn.LSTM(h, h, cfg.num_layers)
        self.embed = nn.ModuleDict({g: nn.Embedding(w, h) for g, w in groups.items()})
        self.classify = nn.ModuleDict({g: nn.Linear(h, w) for g, w in groups.items()})
        # per position: group, valid-choice count
        self._pos_group: tuple[str, ...] = tuple(decision_group(d) for d in self.decisions)
        self.register_buffer(
            "num_choices", torch.tensor([d.num_choices for d in self.decisions]), persistent=False
        )
        self._group_pos: dict[str, list[int]] = {g: [] for g in groups}
        for t, g in enumerate(self._pos_group):
            self._group_pos[g].append(t)
        self.reset_parameters(seed)

    @property
    def num_decisions(self) -> int:
        return len(self.decisions)

    def reset_parameters(self, seed: int = 0) -> None:
        """Uniform ``[-init_range, init_range]`` init of every parameter, reproducible from ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        r = self.cfg.init_range
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.rand(p.shape, generator=gen) * (2 * r) - r)

    # ------------------------------------------------------------------------------------
    def _masked_logits(self, t: int, out: Tensor) -> Tensor:
        """Logits ``[B, W]`` of position ``t`` from LSTM output ``[B, H]``; invalid -> -inf."""
        g = self._pos_group[t]
        logits = self.classify[g](out)
        n = self.decisions[t].num_choices
        if n < logits.shape[-1]:
            logits = logits.clone()
            logits[..., n:] = float("-inf")
        return logits

    @staticmethod
    def _entropy(logp: Tensor) -> Tensor:
        """Entropy over the last axis of log-probabilities that may contain -inf."""
        finite = torch.isfinite(logp)
        safe = torch.where(finite, logp, torch.zeros_like(logp))  # keeps 0 * -inf out of backward
        return -(safe.exp() * safe).masked_fill(~finite, 0.0).sum(-1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Samples:
        """Sample ``n`` decision sequences (reproducible given ``generator``'s state)."""
        h = self.cfg.hidden_size
        x = self.g_emb.expand(1, n, h)
        state: tuple[Tensor, Tensor] | None = None
        choices, logps, ents = [], [], []
        for t in range(self.num_decisions):
            out, state = self.lstm(x, state)
            logp = F.log_softmax(self._masked_logits(t, out[0]), dim=-1)
            c = torch.multinomial(logp.exp(), 1, generator=generator)[:, 0]
            choices.append(c)
            logps.append(logp.gather(1, c[:, None])[:, 0])
            ents.append(self._entropy(logp))
            x = self.embed[self._pos_group[t]](c)[None]
        return Samples(
            choices=torch.stack(choices, 1),
            log_probs=torch.stack(logps, 1).sum(1),
            entropy=torch.stack(ents, 1).sum(1),
        )

    def evaluate(self, choices: Tensor) -> tuple[Tensor, Tensor]:
        """Log-probabilities ``[B]`` and entropies ``[B]`` of given sequences ``[B, T]`` (with grad)."""
        choices = torch.as_tensor(choices, dtype=torch.long)
        if choices.dim() != 2 or choices.shape[1] != self.num_decisions:
            raise ValueError(f"choices must be [B, {self.num_decisions}], got {tuple(choices.shape)}")
        if bool((choices < 0).any()) or bool((choices >= self.num_choices).any()):
            raise ValueError("a choice is out of range for its decision")
        b, t_len = choices.shape
        h = self.cfg.hidden_size
        # inputs: g_emb, then the embedding of each choice but the last   [T, B, H]
        emb = torch.empty(t_len, b, h)
        for g, pos in self._group_pos.items():
            nxt = [p + 1 for p in pos if p + 1 < t_len]
            if nxt:
                src = torch.tensor([p - 1 for p in nxt])
                emb[nxt] = self.embed[g](choices[:, src].T)
        x = torch.cat([self.g_emb.expand(1, b, h), emb[1:]], 0)
        out, _ = self.lstm(x)  # [T, B, H]
        logp_all = torch.zeros(t_len, b)
        ent_all = torch.zeros(t_len, b)
        for g, pos in self._group_pos.items():
            idx = torch.tensor(pos)
            logits = self.classify[g](out[idx])  # [Tg, B, W]
            n = self.num_choices[idx][:, None, None]
            ar = torch.arange(logits.shape[-1])[None, None, :]
            logits = logits.masked_fill(ar >= n, float("-inf"))
            logp = F.log_softmax(logits, dim=-1)
            logp_all[idx] = logp.gather(2, choices[:, idx].T[..., None])[..., 0]
            ent_all[idx] = self._entropy(logp)
        return logp_all.sum(0), ent_all.sum(0)

    def genotype(self, choices: Tensor | list[int], *, name: str = "genotype") -> Genotype:
        """The genotype of one decision sequence ``[T]``."""
        seq = [int(c) for c in (choices.tolist() if isinstance(choices, Tensor) else choices)]
        return genotype_from_choices(seq, self.cfg.head_kind, name=name)
