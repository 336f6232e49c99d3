"""The MkDocs hook that puts generated tables into the pages (docs/hooks/generated.py)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("mkdocs", reason="the hook runs inside mkdocs (pip install -e '.[docs]')")


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("docs_hook_generated", ROOT / "docs" / "hooks" / "generated.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _site(tmp_path: Path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "mkdocs.yml").write_text("site_name: t\n")
    config = {"config_file_path": str(tmp_path / "mkdocs.yml"), "docs_dir": str(tmp_path / "docs")}
    page = SimpleNamespace(file=SimpleNamespace(src_uri="sub/page.md"))
    return config, page


def test_include_demotes_headings_and_rewrites_links(hook, tmp_path):
    config, page = _site(tmp_path)
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "plot.png").write_bytes(b"\x89PNG")
    (results / "accuracy.md").write_text(
        "# Accuracy\n\n## Table\n\n![error](plot.png)\n\nsee [the runner](../run.py) and "
        "[the paper](https://arxiv.org/abs/2211.01095)\n\n```python\n# not a heading\n```\n")
    out = hook.on_page_markdown("Intro\n\n<!-- include: benchmarks/results/*.md -->\n", page, config, None)
    assert "### Accuracy" in out and "#### Table" in out
    assert "# not a heading" in out and "#### not a heading" not in out  # code fences untouched
    assert "![error](../benchmarks/results/plot.png)" in out            # relative to docs/sub/page.md
    assert "the runner (`benchmarks/run.py`)" in out                     # unpublished file: plain text
    assert "[the paper](https://arxiv.org/abs/2211.01095)" in out


def test_missing_include_leaves_a_note(hook, tmp_path):
    config, page = _site(tmp_path)
    out = hook.on_page_markdown("<!-- include: nothing/*.md | missing: Run the benchmarks. -->\n", page, config, None)
    assert out.startswith('!!! warning "Not generated yet"') and "Run the benchmarks." in out


def test_published_assets_are_added(hook, tmp_path):
    from mkdocs.structure.files import Files

    from mkdocs.config import load_config

    _site(tmp_path)
    config = load_config(str(tmp_path / "mkdocs.yml"))
    config.plugins._current_plugin = "hooks"  # set by MkDocs while it runs an event
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "plot.png").write_bytes(b"\x89PNG")
    (results / "notes.md").write_text("# not published as a page\n")
    files = hook.on_files(Files([]), config)
    assert [f.src_uri for f in files] == ["benchmarks/results/plot.png"]


def test_registry_and_api_tables_name_every_entry(hook):
    from diffode.integrators import INTEGRATORS

    page = SimpleNamespace(file=SimpleNamespace(src_uri="x.md"))
    config = {"config_file_path": str(ROOT / "mkdocs.yml"), "docs_dir": str(ROOT / "docs")}
    registry = hook.on_page_markdown("<!-- integrator-registry -->\n", page, config, None)
    for name in INTEGRATORS:
        assert f"| `{name}` |" in registry
    overview = hook.on_page_markdown("<!-- api-overview -->\n", page, config, None)
    import diffode

    for name in diffode.__all__:
        if not name.startswith("__"):
            assert re.search(rf"\[`{re.escape(name)}`\]|\| `{re.escape(name)}` \| module", overview), name


def test_api_marker_for_a_missing_module(hook):
    page = SimpleNamespace(file=SimpleNamespace(src_uri="x.md"))
    config = {"config_file_path": str(ROOT / "mkdocs.yml"), "docs_dir": str(ROOT / "docs")}
    assert hook.on_page_markdown("<!-- api: diffode.solve -->\n", page, config, None) == "::: diffode.solve\n"
    out = hook.on_page_markdown("<!-- api: diffode.no_such_module -->\n", page, config, None)
    assert "Not available yet" in out and ":::" not in out
