"""marconi: Marconi's eviction utility (Pan et al., "Marconi: Prefix Caching for the Era of
Hybrid LLMs", MLSys'25): recency plus FLOPs saved per byte of cache. Recomputing a context of
n tokens costs about 2 P n + 2 L d n^2 FLOPs for its n x kv_bytes_per_token bytes, so the
FLOPs a byte saves grow with the context's length; an entry's utility is
``(1 - alpha) x recency + alpha x flop_efficiency`` (both scaled to [0, 1] over the visible
entries), and the lowest-utility entries go first."""

from kv_cache_rl.policies.base import PressurePolicy


class MarconiPolicy(PressurePolicy):
    name = "marconi"
    alpha = 0.5  # Marconi tunes alpha online; 0.5 weighs recency and efficiency alike
    trigger, target = 0.88, 0.75
    # Llama-3.1-8B: 8.0e9 parameters, 32 layers x 4096 hidden (models.json)
    params, layers, hidden = 8.03e9, 32, 4096

    def _efficiency(self, entry) -> float:
        n = max(entry.tokens, 1)
        return (2 * self.params * n + 2 * self.layers * self.hidden * n * n) / n

    def act(self, obs, episode=None):
        idle = [e.idle_s for e in obs.visible.values()] or [0.0]
        eff = [self._efficiency(e) for e in obs.visible.values()] or [1.0]
        self._span = (max(idle) or 1.0, min(eff), (max(eff) - min(eff)) or 1.0)
        return super().act(obs, episode)

    def score(self, entry, obs):
        if entry.kind in ("generation", "system"):
            return None
        idle_max, eff_min, eff_span = self._span
        recency = 1.0 - entry.idle_s / idle_max
        utility = (1 - self.alpha) * recency + \
            self.alpha * (self._efficiency(entry) - eff_min) / eff_span
        return 1.0 - utility
