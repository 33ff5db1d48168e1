"""random: 0-3 random actions on random visible entries each step (a sanity floor)."""

import numpy as np

from kv_cache_rl.task.episode import Action
from kv_cache_rl.policies.base import Policy


class RandomPolicy(Policy):
    name = "random"

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng([seed, 0x5EED])

    def act(self, obs, episode=None):
        ids = sorted(obs.visible)
        if not ids:
            return []
        kinds = ("evict", "compress", "swap_to_cpu")
        return [Action(kinds[int(self.rng.integers(3))], int(self.rng.choice(ids)))
                for _ in range(int(self.rng.integers(0, 4)))]
