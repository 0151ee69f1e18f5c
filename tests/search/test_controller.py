"""The LSTM controller: valid samples, masking, log-probs that match a re-evaluation."""

from __future__ import annotations

import pytest
import torch

from nasfcos.genotypes import choices_from_genotype, decisions
from nasfcos.search.controller import Controller, ControllerConfig, decision_group


@pytest.mark.parametrize("kind,length", [("dag", 66), ("sequential", 46), ("fcos", 40)])
def test_decisions_come_from_the_search_space(kind: str, length: int) -> None:
    c = Controller(ControllerConfig(head_kind=kind, hidden_size=16))
    assert c.decisions == decisions(kind)
    assert c.num_decisions == length
    for d in c.decisions:  # each group's classifier is wide enough for every position in it
        assert c.group_width[decision_group(d)] >= d.num_choices


@pytest.mark.parametrize("kind", ["dag", "sequential", "fcos"])
def test_samples_are_valid_genotypes_and_log_probs_match(kind: str) -> None:
    c = Controller(ControllerConfig(head_kind=kind, hidden_size=32), seed=3)
    s = c.sample(48, torch.Generator().manual_seed(0))
    assert s.choices.shape == (48, c.num_decisions)
    n = torch.tensor([d.num_choices for d in c.decisions])
    assert bool((s.choices >= 0).all()) and bool((s.choices < n).all())
    for row in s.choices:
        g = c.genotype(row)  # validated by parse_genotype
        assert g.head.kind == kind
        assert choices_from_genotype(g) == row.tolist()
    lp, ent = c.evaluate(s.choices)
    torch.testing.assert_close(lp.detach(), s.log_probs, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ent.detach(), s.entropy, atol=1e-4, rtol=1e-5)
    assert bool((s.log_probs < 0).all()) and bool((s.entropy > 0).all())


def test_untrained_controller_is_near_uniform() -> None:
    c = Controller(ControllerConfig(hidden_size=100), seed=0)
    s = c.sample(4, torch.Generator().manual_seed(1))
    uniform = sum(torch.log(torch.tensor(float(d.num_choices))) for d in c.decisions)
    # uniform +-0.1 init: entropy within 2 % of the uniform policy's
    assert abs(float(s.entropy.mean()) - float(uniform)) < 0.02 * float(uniform)


def test_invalid_choices_are_masked_even_when_favoured() -> None:
    c = Controller(ControllerConfig(hidden_size=16), seed=0)
    with torch.no_grad():  # the larger the pool index, the (much) likelier: 9 > 8 > ... > 0
        c.classify["fpn_index"].bias.copy_(torch.arange(10.0) * 20.0)
    s = c.sample(16, torch.Generator().manual_seed(0))
    for t, d in enumerate(c.decisions):
        if decision_group(d) == "fpn_index":
            assert bool((s.choices[:, t] == d.num_choices - 1).all()), d.name  # top valid index
    assert torch.isfinite(s.log_probs).all()
    lp, _ = c.evaluate(s.choices)
    assert torch.isfinite(lp).all()


def test_sampling_is_reproducible_and_init_is_seeded() -> None:
    a, b = Controller(ControllerConfig(hidden_size=16), seed=5), Controller(ControllerConfig(hidden_size=16), seed=5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
        assert float(pa.detach().abs().max()) <= 0.1
    sa = a.sample(8, torch.Generator().manual_seed(9))
    sb = b.sample(8, torch.Generator().manual_seed(9))
    assert torch.equal(sa.choices, sb.choices)
    other = Controller(ControllerConfig(hidden_size=16), seed=6)
    assert not torch.equal(next(iter(other.parameters())), next(iter(a.parameters())))


def test_evaluate_is_differentiable_and_rejects_bad_input() -> None:
    c = Controller(ControllerConfig(hidden_size=16), seed=0)
    s = c.sample(4, torch.Generator().manual_seed(0))
    lp, ent = c.evaluate(s.choices)
    (lp.sum() + ent.sum()).backward()
    grads = [p.grad for p in c.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    bad = s.choices.clone()
    bad[0, 0] = 4  # fpn[0].inputs[0] has 4 valid choices (0..3)
    with pytest.raises(ValueError):
        c.evaluate(bad)
    with pytest.raises(ValueError):
        c.evaluate(s.choices[:, :-1])
