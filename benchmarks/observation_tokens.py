"""Token counts of the observation text over whole episodes (the budget is 600 tokens).

    python benchmarks/observation_tokens.py [--episodes 5] [--policy compress_first]
"""

from __future__ import annotations

import argparse
import statistics

from kv_cache_rl.policies import make_policy
from kv_cache_rl.task.scenario import DIFFICULTIES, make_scenario
from kv_cache_rl.task.tokens import count_tokens, encoding
from kv_cache_rl.task.episode import Episode


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--policy", default="compress_first")
    args = parser.parse_args(argv)
    counts = []
    for difficulty in DIFFICULTIES:
        for seed in range(args.episodes):
            episode, policy = Episode(make_scenario(difficulty, seed)), make_policy(args.policy)
            while not episode.done:
                counts.append(count_tokens(episode.text()))
                for a in policy.act(episode.observation):
                    episode.call(a.kind, {"seq_id": a.seq_id})
                episode.advance()
    counts.sort()
    q = statistics.quantiles(counts, n=100)
    print(f"{len(counts)} observations ({encoding()[0]}): min {counts[0]}, p50 {q[49]:.0f}, "
          f"p90 {q[89]:.0f}, p99 {q[98]:.0f}, max {counts[-1]} tokens (budget 600)")


if __name__ == "__main__":
    main()
