"""The registry: policy classes by name. ``kv_cache_rl.policies`` fills it with every shipped
policy when imported; planners that replay other policies (``oracle``) look them up here, so
no policy module imports the package that lists it."""

from __future__ import annotations

from kv_cache_rl.errors import ConfigError
from kv_cache_rl.policies.base import Policy

POLICIES: dict[str, type[Policy]] = {}


def make_policy(name: str) -> Policy:
    """A fresh policy by registry name."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ConfigError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None
