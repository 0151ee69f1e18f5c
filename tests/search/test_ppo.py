"""PPO: rewarded samples become likelier; clipping; baseline; buffer; exact state round trip."""

from __future__ import annotations

import pytest
import torch

from nasfcos.search.controller import Controller, ControllerConfig
from nasfcos.search.evaluators import toy_reward
from nasfcos.search.ppo import PPO, PPOConfig, clipped_surrogate


def _batch(c: Controller, n: int = 8, seed: int = 0):
    return c.sample(n, torch.Generator().manual_seed(seed))


def test_a_ppo_step_raises_the_probability_of_the_rewarded_sample() -> None:
    c = Controller(ControllerConfig(hidden_size=32), seed=0)
    s = _batch(c)
    # toy reward: the sample with the most deformable convolutions gets 1, the rest 0
    scores = [toy_reward(c.genotype(row)) for row in s.choices]
    best = max(range(len(scores)), key=scores.__getitem__)
    rewards = [1.0 if i == best else 0.0 for i in range(len(scores))]
    ppo = PPO(c, PPOConfig())  # the defaults
    stats = ppo.update(s.choices, s.log_probs, rewards)
    with torch.no_grad():
        after, _ = c.evaluate(s.choices)
    gain = after - s.log_probs
    assert float(gain[best]) > 0.0
    others = torch.cat([gain[:best], gain[best + 1:]])
    assert float(gain[best]) > float(others.max())
    assert stats.updates == PPOConfig().epochs * 1  # 8 samples, minibatches of 10: one per epoch
    assert stats.buffer == 8


def test_clipped_surrogate_stops_pushing_beyond_the_clip_range() -> None:
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.05, 1.3, 0.95, 0.7])).requires_grad_(True)
    loss = clipped_surrogate(logp, old, adv, eps=0.1)
    loss.backward()
    g = logp.grad
    assert g is not None
    assert float(g[0]) < 0 and float(g[2]) > 0  # inside the range: still pushed
    assert float(g[1]) == 0.0 and float(g[3]) == 0.0  # outside, in the advantage's direction: clipped


def test_baseline_is_an_exponential_moving_average() -> None:
    ppo = PPO(Controller(ControllerConfig(hidden_size=8)), PPOConfig(baseline_decay=0.5))
    assert ppo.observe(2.0) == 2.0  # first reward initialises it
    assert ppo.observe(4.0) == pytest.approx(3.0)
    assert ppo.observe(0.0) == pytest.approx(1.5)


def test_buffer_holds_only_real_samples_and_is_capped() -> None:
    c = Controller(ControllerConfig(hidden_size=8), seed=0)
    ppo = PPO(c, PPOConfig(buffer_size=12, minibatch_size=5, epochs=2))
    s = _batch(c, 8)
    st = ppo.update(s.choices[:3], s.log_probs[:3], [1.0, 0.0, 0.5])
    assert st.buffer == 3 and st.updates == 2  # 2 epochs x 1 minibatch of 3
    st = ppo.update(s.choices, s.log_probs, [0.1] * 8)
    assert st.buffer == 11 and st.updates == 2 * 3
    st = ppo.update(s.choices, s.log_probs, [0.2] * 8)
    assert st.buffer == 12 and len(ppo.buf_rewards) == 12
    assert ppo.buf_rewards[-8:] == [0.2] * 8
    st = ppo.update([], [], [])  # a batch where every evaluation failed
    assert st.updates == 0


def test_state_dict_round_trip_continues_bit_exactly() -> None:
    cfg = ControllerConfig(hidden_size=16)
    a = PPO(Controller(cfg, seed=1), PPOConfig(lr=1e-3), seed=2)
    s = _batch(a.controller, 8)
    a.update(s.choices, s.log_probs, [float(i) for i in range(8)])
    b = PPO(Controller(cfg, seed=99), PPOConfig(lr=1e-3), seed=77)
    b.load_state_dict(a.state_dict())
    s2 = _batch(a.controller, 8, seed=1)
    a.update(s2.choices, s2.log_probs, [float(-i) for i in range(8)])
    b.update(s2.choices, s2.log_probs, [float(-i) for i in range(8)])
    for pa, pb in zip(a.controller.parameters(), b.controller.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert a.baseline == b.baseline
