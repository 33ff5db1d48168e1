"""Bundle the simulator core (``kv_cache_rl``, two levels up in the repository) into the
standard wheel, so the wheel `prime env push` uploads is self-contained on the Hub.

Editable installs (``pip install -e``, ``prime env install`` from the repository root) bundle
nothing: ``dev-mode-dirs`` puts the repository root on the path, so the checkout's own
``kv_cache_rl`` is imported (a copy would go stale).
"""

from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class BundleCore(BuildHookInterface):
    PLUGIN_NAME = "bundle-core"

    def initialize(self, version: str, build_data: dict) -> None:
        if version != "standard":
            return
        core = Path(self.root).resolve().parent.parent / "kv_cache_rl"
        if not (core / "episode.py").is_file():
            raise RuntimeError(
                f"kv-cache-eviction bundles the simulator core from {core}, which is missing: "
                "build the wheel from a checkout of the kv-cache-rl repository")
        for path in sorted(core.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                build_data["force_include"][str(path)] = str(
                    Path("kv_cache_rl") / path.relative_to(core))
