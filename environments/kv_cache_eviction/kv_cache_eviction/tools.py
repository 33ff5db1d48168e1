"""The v1 tool server: ``evict`` / ``compress`` / ``swap_to_cpu`` / ``keep`` on a ``vf.Toolset``.

verifiers runs it out of process (``python -m kv_cache_eviction.tools``; one server for the
whole evaluation, shared by every rollout). Its only memory of a rollout is the rollout's
:class:`KVState`, which verifiers pulls before and pushes after every call as JSON: the
episode travels as :meth:`Episode.state_dict` (the scenario and every call so far) and is
rebuilt from it (:class:`EpisodeCache` replays only what is new). A tool never raises:
:meth:`Episode.call` returns ``ok: ...`` or ``error: ...`` text and leaves the episode as it
was on an error.

Malformed calls never get here: the task's interceptor answers them at the tool gate with the
core's error text (``kv_cache_eviction.v1``). So ``seq_id`` is advertised as an integer but
passed through untouched, for :meth:`Episode.call` to judge exactly as the core does.
"""

# no `from __future__ import annotations`: MCP reads the tool signatures' real types
from typing import Annotated, Any

import verifiers.v1 as vf
from pydantic import WithJsonSchema

from kv_cache_eviction.common import CACHE, SEQ_ID_DOC, TOOL_DOCS

SeqId = Annotated[Any, WithJsonSchema({"type": "integer", "description": SEQ_ID_DOC})]


class KVState(vf.State):
    """One rollout's state, plain data (it crosses to the tool server and back as JSON)."""

    episode: dict = {}
    """:meth:`Episode.state_dict`: the scenario and every call, per step (replayable)."""
    observation: str = ""
    """What the model read after the last step (the next observation or the end notice)."""
    observed_turn: int = 0
    """The assistant turn that step closed: the episode has run one step per turn so far."""
    clock_turns: int = -1
    """``trace.num_turns`` when the clock last ran (it runs before each model request)."""
    scores: dict = {}
    """The rubric's values, set when the rollout ends."""


def apply_call(state: KVState, name: str, arguments: Any) -> str:
    """One tool call on the rollout's episode; the state is updated in place."""
    if not state.episode:
        return "error: this rollout has no episode (the task setup did not run)"
    episode = CACHE.restore(state.episode)
    text = episode.call(name, arguments)
    state.episode = episode.state_dict()
    CACHE.put(episode)
    return text


class KVCacheTools(vf.Toolset[vf.SharedToolsetConfig, KVState]):
    TOOL_PREFIX = None  # advertise bare evict / compress / swap_to_cpu / keep

    @vf.tool
    def evict(self, seq_id: SeqId) -> str:
        return apply_call(self.state, "evict", {"seq_id": seq_id})

    @vf.tool
    def compress(self, seq_id: SeqId) -> str:
        return apply_call(self.state, "compress", {"seq_id": seq_id})

    @vf.tool
    def swap_to_cpu(self, seq_id: SeqId) -> str:
        return apply_call(self.state, "swap_to_cpu", {"seq_id": seq_id})

    @vf.tool
    def keep(self) -> str:
        return apply_call(self.state, "keep", {})


for _name, _doc in TOOL_DOCS.items():
    getattr(KVCacheTools, _name).__doc__ = _doc

if __name__ == "__main__":
    KVCacheTools.run()
