"""Scenarios, episodes, observation and rubric: determinism, contracts, ranges."""

import json

import pytest

from kv_cache_rl.task.episode import Action, Episode, EpisodeError, parse_call
from kv_cache_rl.task.observation import eviction_value
from kv_cache_rl.policies import make_policy
from kv_cache_rl.task.rubric import REWARD_RANGE, RUBRIC, EpisodeRecord, score
from kv_cache_rl.task.runner import play
from kv_cache_rl.task.scenario import TIERS, make_scenario


def test_scenario_is_deterministic_and_within_its_tier():
    for difficulty in TIERS:
        a = make_scenario(difficulty, 3)
        make_scenario.cache_clear()
        b = make_scenario(difficulty, 3)
        assert a == b and a.trace == b.trace and a.config == b.config
        lo, hi = TIERS[difficulty].memory
        assert lo <= a.memory_fraction <= hi
        assert a.config.num_gpu_blocks <= a.peak_blocks
        assert a.workload in TIERS[difficulty].loads
        assert a.reference_tokens > 0
    assert make_scenario("hard", 1).trace != make_scenario("hard", 2).trace


def test_scenario_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown difficulty"):
        make_scenario("impossible", 0)
    with pytest.raises(ValueError):
        make_scenario("easy", 0, steps=0)
    with pytest.raises(ValueError, match="memory_fraction"):
        make_scenario("easy", 0, memory_fraction=0.0)


def test_memory_fraction_changes_only_the_budget():
    import math

    base = make_scenario("hard", 4)
    scarce = make_scenario("hard", 4, memory_fraction=0.35)
    assert scarce.trace == base.trace and scarce.workload == base.workload
    assert scarce.peak_blocks == base.peak_blocks
    assert scarce.reference_tokens == base.reference_tokens
    assert scarce.memory_fraction == 0.35
    assert scarce.config.num_gpu_blocks == max(64, math.ceil(0.35 * base.peak_blocks))
    assert scarce.config == base.config.replace(num_gpu_blocks=scarce.config.num_gpu_blocks)
    assert make_scenario("hard", 4, memory_fraction=0.35) is scarce  # cached


def test_episode_starts_warm_and_runs_twenty_steps():
    episode = Episode(make_scenario("medium", 1))
    assert episode.engine.cached_sequences(), "warm start: the cache holds KV at step 1"
    assert episode.observation.memory_usage > 0.3
    steps = 0
    while not episode.done:
        episode.advance()
        steps += 1
    assert steps == 20 and len(episode.record.step_usage) == 20
    with pytest.raises(EpisodeError, match="over"):
        episode.advance()
    assert episode.call("keep").startswith("error: the episode is over")


def test_same_seed_same_text_and_reward():
    def run():
        make_scenario.cache_clear()
        episode = play(make_scenario("hard", 4), make_policy("hybrid"))
        return episode.observation.text(), episode.score(), episode.history
    assert run() == run()


def test_observation_text_fields_and_visible_ids():
    episode = Episode(make_scenario("hard", 0))
    text = episode.text()
    for key in ("memory_usage", "memory_budget", "episode_remaining", "time_above_0_95",
                "pending_queue_growth", "cache_overview", "top_memory_entries",
                "top_eviction_candidates", "pending_summary", "visible_seq_ids"):
        assert key in text
    visible = episode.observation.visible
    assert visible and all(0.0 <= e.eviction_value <= 1.0 for e in visible.values())
    hidden = max(s.seq_id for s in episode.engine.live.values()) + 1000
    assert "not visible" in episode.call("evict", {"seq_id": hidden})


def test_observation_fits_600_tokens():
    tokens = pytest.importorskip("kv_cache_rl.task.tokens")
    try:
        tokens.encoding()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    worst = 0
    for difficulty in TIERS:
        episode = Episode(make_scenario(difficulty, 0))
        while not episode.done:
            worst = max(worst, tokens.count_tokens(episode.text()))
            episode.advance()
    assert 50 < worst <= 600


def test_o200k_offline_is_tiktokens_encoding():
    """The count uses tiktoken's o200k_base built from bpe-openai's bundled BPE file; it must
    tokenize exactly as bpe-openai's own (Rust) o200k_base does."""
    bpe_openai = pytest.importorskip("bpe_openai")
    from kv_cache_rl.task.tokens import encoding

    name, enc = encoding()
    assert name == "o200k_base"
    reference = bpe_openai.get_encoding("o200k_base")
    episode = play(make_scenario("hard", 2), make_policy("compress_first"))
    for text in (episode.text(), "evict(seq_id=43) 0.8745 ünïcode 上下文 \n\t  x"):
        assert enc.encode(text) == list(reference.encode(text))


@pytest.mark.parametrize("name,args,message", [
    ("evict", {}, "needs seq_id"),
    ("evict", {"seq_id": "x"}, "must be an integer"),
    ("evict", {"seq_id": 1, "extra": 2}, "unexpected"),
    ("keep", {"seq_id": 1}, "takes no arguments"),
    ("drop_table", {}, "unknown tool"),
    ("evict", "{not json", "not valid JSON"),
    ("evict", "[1]", "JSON object"),
])
def test_bad_calls_are_clear_and_change_nothing(name, args, message):
    episode = Episode(make_scenario("easy", 0))
    before = (episode.engine.pool.used_units, sorted(episode.engine.live), episode.text())
    result = episode.call(name, args)
    assert result.startswith("error:") and message in result and "Traceback" not in result
    assert (episode.engine.pool.used_units, sorted(episode.engine.live), episode.text()) == before
    assert episode.record.invalid_actions == 1


def test_call_cap_per_step():
    episode = Episode(make_scenario("easy", 0), max_calls_per_step=2)
    assert episode.call("keep").startswith("ok")
    assert episode.call("keep").startswith("ok")
    assert "at most 2 actions" in episode.call("keep")
    episode.advance()
    assert episode.call("keep").startswith("ok")


def test_evict_compress_swap_through_episode():
    episode = Episode(make_scenario("hard", 1))
    entries = sorted(episode.observation.visible.values(), key=lambda e: -e.blocks)
    target = next(e for e in entries if not e.on_cpu and e.tier == 0)
    used = episode.engine.pool.used_units
    assert episode.call("compress", {"seq_id": target.seq_id}).startswith("ok: compressed")
    assert episode.engine.pool.used_units < used
    assert episode.call("evict", {"seq_id": target.seq_id}).startswith("ok: evicted")
    assert len(episode.record.evictions) == 1
    assert episode.call("evict", {"seq_id": target.seq_id}).startswith("error")


def test_state_round_trip_replays_exactly():
    episode = Episode(make_scenario("medium", 2))
    policy = make_policy("compress_first")
    for _ in range(5):
        for action in policy.act(episode.observation):
            episode.call(action.kind, {"seq_id": action.seq_id})
        episode.call("evict", {"seq_id": -1})  # invalid calls are part of the state too
        episode.advance()
    state = json.loads(json.dumps(episode.state_dict()))
    rebuilt = Episode.from_state(state)
    assert rebuilt.text() == episode.text()
    assert rebuilt.record.to_dict() == episode.record.to_dict()


def test_rubric_ranges_and_signs():
    low, high = REWARD_RANGE
    worst = EpisodeRecord("hard", 0, 3, step_s=1.0, step_usage=[1.0] * 3,
                          step_failures=[3, 3, 3], step_blocked_s=[1.0] * 3, preemptions=9,
                          tokens_served=0, reference_tokens=100, cached_prompt_tokens=0,
                          prompt_tokens=100, reference_hit_rate=0.5, swap_latency_s=10,
                          evictions=[{"kind": "system", "tokens": 5, "risky": True,
                                      "reused": True}] * 6)
    best = EpisodeRecord("hard", 0, 3, step_s=1.0, step_usage=[0.5] * 3, step_failures=[0] * 3,
                         step_blocked_s=[0.0] * 3, tokens_served=100, reference_tokens=100,
                         cached_prompt_tokens=50, prompt_tokens=50, reference_hit_rate=0.5)
    assert score(worst)["reward"] == pytest.approx(low, abs=1e-9)
    assert score(best)["reward"] == pytest.approx(high, abs=1e-9)
    for fn, _ in RUBRIC:
        if fn.__name__.endswith("_metric"):
            continue
        for record in (worst, best):
            assert -1.0 <= fn(record) <= 1.0, fn.__name__
    assert score(worst)["failure_penalty"] == -1.0
    assert score(EpisodeRecord("e", 0, 1, preemptions=3))["failure_penalty"] == pytest.approx(-0.55)
    # expected wrong answers are failures too, fractional ones included
    assert score(EpisodeRecord("e", 0, 1, wrong_answers=0.5))["failure_penalty"] == \
        pytest.approx(-0.075)


def test_eviction_value_orders_kinds():
    assert eviction_value("reasoning", 0, 1, 0) > eviction_value("context", 0, 1, 0) \
        > eviction_value("generation", 0, 0.1, 0) > eviction_value("system", 0, 1, 0)
    assert eviction_value("context", 0, 1, 40) > eviction_value("context", 0, 1, 1)
    assert eviction_value("context", 1, 1, 5) < eviction_value("context", 0, 1, 5)


def test_parse_call_accepts_numeric_strings():
    assert parse_call("evict", '{"seq_id": "12"}') == Action("evict", 12)
    assert parse_call("keep", "") == Action("keep")


def test_observation_counts_down_to_zero_at_the_end():
    from kv_cache_rl.task.observation import Observation

    episode = Episode(make_scenario("easy", 3, steps=3))
    heads = [episode.text().split(" | ")[:2]]
    while not episode.done:
        episode.advance()
        heads.append(episode.text().split(" | ")[:2])
    assert heads == [["step 1/3", "episode_remaining 3"], ["step 2/3", "episode_remaining 2"],
                     ["step 3/3", "episode_remaining 1"], ["step 3/3", "episode_remaining 0"]]
    final = episode.observation
    assert final.step == 3 and Observation.from_text(final.text()) == final


def _rebuilt_equals(episode: Episode) -> None:
    state = json.loads(json.dumps(episode.state_dict()))
    again = Episode.from_state(state)
    assert again.state_dict() == state and again.history == episode.history
    assert again.record.invalid_actions == episode.record.invalid_actions
    assert again.text() == episode.text()


def test_a_call_after_the_end_is_refused_and_replayed_after_it():
    episode = Episode(make_scenario("medium", 5, steps=2))
    seq_id = next(iter(episode.observation.visible))
    episode.advance()
    episode.advance()
    assert episode.call("evict", {"seq_id": seq_id}).startswith("error: the episode is over")
    _rebuilt_equals(episode)  # not replayed into the last step, where it would be accepted


def test_odd_arguments_get_an_error_text_not_an_exception():
    episode = Episode(make_scenario("easy", 2, steps=2))
    assert episode.call("swap_to_cpu", {"seq_id": 1, 1: "x", "a": 2}).startswith("error:")
    assert episode.call("keep", {2: 0, "b": 1}).startswith("error:")
    _rebuilt_equals(episode)


def test_a_numpy_integer_seq_id_is_an_integer():
    import numpy as np

    episode = Episode(make_scenario("easy", 18, steps=2))
    seq_id = next(iter(episode.observation.visible))
    assert not episode.call("compress", {"seq_id": np.int64(seq_id)}).startswith("error")
    assert episode.call("evict", {"seq_id": np.float64(seq_id)}).startswith("error")
    _rebuilt_equals(episode)
