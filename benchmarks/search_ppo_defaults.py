"""Compare PPO settings of the search controller on the toy reward (no training; minutes on CPU).

For each setting and seed, runs a toy search (reward = deformable ops, see
``nasfcos.search.evaluators.toy_reward``) of ``--trials`` architectures and reports the
mean reward of the first and the last ``--window`` samples and the wall time.  The
"ancestor" row imitates Nekrasov et al.'s update (1-sample minibatches, one epoch, no
entropy bonus) on a buffer holding only real samples.

    .venv/bin/python benchmarks/search_ppo_defaults.py --trials 240 --seeds 0 1
    .venv/bin/python benchmarks/search_ppo_defaults.py --noise 2 --only default "ancestor(mb1,ep1,ent0)" mb10,ep10

With noise, "first"/"last" are means of noisy rewards (the noise has mean 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time

from nasfcos.search.loop import Search, SearchConfig
from nasfcos.search.ppo import PPOConfig

SETTINGS: dict[str, PPOConfig] = {
    "default": PPOConfig(),
    "ancestor(mb1,ep1,ent0)": PPOConfig(minibatch_size=1, epochs=1, entropy_coef=0.0),
    "mb10,ep1": PPOConfig(minibatch_size=10, epochs=1),
    "mb25,ep4": PPOConfig(minibatch_size=25, epochs=4),
    "mb10,ep4,ent0": PPOConfig(entropy_coef=0.0),
    "mb10,ep4,ent1e-2": PPOConfig(entropy_coef=1e-2),
    "lr3e-4": PPOConfig(lr=3e-4),
    "mb10,ep10": PPOConfig(minibatch_size=10, epochs=10),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=240)
    ap.add_argument("--window", type=int, default=48)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--noise", type=float, default=0.0, help="std of reward noise (seeded per sample)")
    ap.add_argument("--only", nargs="*", default=None, help="setting names to run")
    args = ap.parse_args()
    results = []
    for name, ppo in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        for seed in args.seeds:
            cfg = SearchConfig(preset="toy", trials=args.trials, seed=seed, ppo=ppo, toy_noise=args.noise)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                s = Search(tmp, cfg, workers=0, progress=False, plot_every_s=None)
                s.run()
                wall = time.perf_counter() - t0
                rewards = [r for log in s.history for r in log.rewards]
            first = sum(rewards[: args.window]) / args.window
            last = sum(rewards[-args.window:]) / args.window
            res = {"setting": name, "seed": seed, "noise": args.noise, "first": round(first, 2), "last": round(last, 2),
                   "wall_s": round(wall, 1), "ppo": dataclasses.asdict(ppo)}
            results.append(res)
            print(f"{name:<24} seed {seed}: first {first:6.2f}  last {last:6.2f}  wall {wall:6.1f} s", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
