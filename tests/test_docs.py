"""The documentation: generated tables up to date, README size, no machine paths or work
narration, relative links that resolve."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables

README = ROOT / "README.md"
ENV_README = ROOT / "environments" / "kv_cache_eviction" / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ENV_README]

MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|root|home|tmp)/")
ISSUE_REF = re.compile(r"\bissues?\s*#?\d|(?<![\w&/])#\d+\b", re.IGNORECASE)
NARRATION = re.compile(
    r"\b(?:earlier|previous|prior|last|this|that) sessions?\b(?!['’]s)"
    r"|\b(?:earlier|previous|prior) runs?\b|\bwe tried\b|\bwas not run here\b"
    r"|\b20\d\d-\d\d-\d\d\b",
    re.IGNORECASE)


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return tables.render_all()


def test_docs_exist():
    assert (ROOT / "docs").is_dir()
    assert not (ROOT / "docs" / "verifiers-notes.md").exists()  # merged into verifiers.md
    for name in ("engine.md", "task.md", "verifiers.md", "training.md", "results.md"):
        assert (ROOT / "docs" / name).is_file(), name


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_marked_tables_are_generated(path, generated):
    text = path.read_text()
    for name, content in tables.regions(text):
        assert name in generated, f"{_name(path)}: unknown table {name!r}"
        assert content == tables.block(generated[name]), \
            f"{_name(path)}: table {name!r} is out of date (python benchmarks/tables.py --write)"
    # every marker is well formed: as many openings as regions found
    assert text.count("<!-- table:") == len(tables.regions(text)) == text.count("<!-- /table -->")


def test_script_check_agrees(generated):
    assert tables.differences(generated) == []


def test_every_table_is_shown_and_baselines_agree(generated):
    shown = {name for path in DOCS for name, _ in tables.regions(path.read_text())}
    assert shown == set(generated)
    # the README's and the environment's baseline tables are one generated table
    for path in (README, ENV_README):
        assert "leaderboard" in dict(tables.regions(path.read_text())), _name(path)
    assert dict(tables.regions(README.read_text()))["leaderboard"] == \
        dict(tables.regions(ENV_README.read_text()))["leaderboard"]


def test_readme_size():
    assert len(README.read_bytes()) <= 15_000


def test_readme_quickstart():
    text = README.read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("bench", "test"):
        assert re.search(rf"^{target}: ", makefile, re.MULTILINE), target
    assert "make bench   # sets up .venv and runs the leaderboard" in text
    assert "make test    # sets up .venv with the dev tools and runs the test suite" in text
    for path in ("docs/verifiers.md", "docs/training.md", "docs/engine.md", "docs/task.md",
                 "docs/results.md"):
        assert f"]({path}" in text, path


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_no_machine_paths_or_narration(path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        where = f"{_name(path)}:{number}: {line.strip()}"
        assert not MACHINE_PATH.search(line), where
        assert not ISSUE_REF.search(line), where
        assert not NARRATION.search(line), where


def _strip_code(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.DOTALL | re.MULTILINE)
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE):
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", DOCS, ids=_name)
def test_relative_links_resolve(path):
    for target in LINK.findall(_strip_code(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{_name(path)}: link to missing {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{_name(path)}: no heading for #{anchor} in {file}"


def test_slug_rules():
    assert _slug("`kv-cache-rl replay`") == "kv-cache-rl-replay"
    assert _slug("The task's acceptance figures") == "the-tasks-acceptance-figures"
    assert _slug("Calibration: the hardware profiles") == "calibration-the-hardware-profiles"
    assert _slug("1. Evaluate an LLM with vf-eval") == "1-evaluate-an-llm-with-vf-eval"
