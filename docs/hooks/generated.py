"""MkDocs hook: put generated content into the pages at build time, so that no table is pasted by hand.

A line that consists of one of these markers is replaced:

``<!-- include: PATTERN -->`` or ``<!-- include: PATTERN | missing: TEXT -->``
    The files matching ``PATTERN`` (a glob relative to the repository root, e.g.
    ``benchmarks/results/*.md`` or ``docs/generated/convergence_slopes.md``), one after the other.
    Their headings are demoted below the page's own, and their relative links are rewritten: images
    and data files next to them are published with the site (see ``EXTERNAL_ASSET_DIRS``), links to
    other repository files become plain text. When nothing matches, a "not generated yet" note
    (with ``TEXT``, if given) takes the marker's place and the build goes on.

``<!-- integrator-registry -->``
    The table of registered integrator names (``diffode.integrators.INTEGRATORS``).

``<!-- api: MODULE -->``
    ``::: MODULE`` (the mkdocstrings reference of the module) when the module exists, else a "not
    available yet" note: pages can name modules that other work is still adding without breaking the
    strict build.

``<!-- cli-reference -->``
    The reference of the ``diffode`` command, built from its argument parser
    (:func:`diffode.cli.build_parser`): per subcommand, its description, usage line and a table of
    its options with their defaults. The page can never disagree with ``diffode --help``.

``<!-- api-overview -->``
    Every public name of diffode (the ``__all__`` of the package and of its subpackages), linked to
    its entry in the API reference. A name that the reference does not render becomes an unresolved
    cross-reference, which fails ``mkdocs build --strict``: the reference cannot silently miss one.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import inspect
import logging
import os
import posixpath
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.generated")

#: Folders (relative to the repository root) whose images and data files are published with the site
#: under the same path, so that included Markdown can show them.
EXTERNAL_ASSET_DIRS = ("benchmarks/results",)
ASSET_SUFFIXES = {".png", ".svg", ".jpg", ".jpeg", ".gif", ".csv", ".json"}

INCLUDE = re.compile(r"^<!--\s*include:\s*(?P<pattern>[^|]+?)\s*(?:\|\s*missing:\s*(?P<missing>.*?))?\s*-->\s*$",
                     re.MULTILINE)
REGISTRY = re.compile(r"^<!--\s*integrator-registry\s*-->\s*$", re.MULTILINE)
API_MODULE = re.compile(r"^<!--\s*api:\s*(?P<module>[\w.]+)\s*-->\s*$", re.MULTILINE)
CLI_REFERENCE = re.compile(r"^<!--\s*cli-reference\s*-->\s*$", re.MULTILINE)
API_OVERVIEW = re.compile(r"^<!--\s*api-overview\s*-->\s*$", re.MULTILINE)
LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})(\s)")


def _root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


# ---------------------------------------------------------------------------------------------
# Published external assets
# ---------------------------------------------------------------------------------------------

def on_files(files, config):
    root = _root(config)
    for folder in EXTERNAL_ASSET_DIRS:
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.suffix.lower() in ASSET_SUFFIXES:
                uri = path.relative_to(root).as_posix()
                if files.get_file_from_path(uri) is None:
                    files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


# ---------------------------------------------------------------------------------------------
# Includes
# ---------------------------------------------------------------------------------------------

def _demote(text: str, base: int) -> str:
    """Shift the headings (outside code fences) so that the highest becomes level ``base``."""
    lines = text.splitlines()
    in_fence = False
    levels = []
    for line in lines:
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (m := HEADING.match(line)):
            levels.append(len(m.group(1)))
    if not levels:
        return text
    shift = base - min(levels)
    out, in_fence = [], False
    for line in lines:
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (m := HEADING.match(line)):
            level = min(6, max(1, len(m.group(1)) + shift))
            line = "#" * level + line[len(m.group(1)):]
        out.append(line)
    return "\n".join(out)


def _rewrite_links(text: str, source: Path, page_uri: str, root: Path, docs_dir: Path) -> str:
    page_dir = posixpath.dirname(page_uri)

    def fix(m: re.Match) -> str:
        target = m.group("target")
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return m.group(0)
        path, _, anchor = target.partition("#")
        resolved = (source.parent / path).resolve()
        uri = None
        if resolved.is_relative_to(docs_dir):
            uri = resolved.relative_to(docs_dir).as_posix()
        elif resolved.is_relative_to(root):
            rel = resolved.relative_to(root).as_posix()
            if resolved.is_file() and resolved.suffix.lower() in ASSET_SUFFIXES and any(
                    rel.startswith(folder + "/") for folder in EXTERNAL_ASSET_DIRS):
                uri = rel
        if uri is None or not resolved.exists():
            # A repository file the site does not publish: keep the words, name the file.
            name = resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else target
            return f"{m.group('text')} (`{name}`)" if m.group("text") else f"`{name}`"
        new = posixpath.relpath(uri, page_dir or ".") + (f"#{anchor}" if anchor else "")
        return f"{m.group('bang')}[{m.group('text')}]({new}{m.group('title') or ''})"

    return LINK.sub(fix, text)


def _include(m: re.Match, page, config) -> str:
    root = _root(config)
    docs_dir = Path(config["docs_dir"]).resolve()
    pattern = m.group("pattern").strip()
    paths = sorted(Path(p) for p in glob.glob(str(root / pattern)) if Path(p).is_file())
    if not paths:
        log.info("include: nothing matches %s (page %s)", pattern, page.file.src_uri)
        extra = f" {m.group('missing').strip()}" if m.group("missing") else ""
        return (f'!!! warning "Not generated yet"\n    No file matched `{pattern}` when this site was built.'
                f"{extra}\n")
    parts = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        if len(paths) > 1 and not any(HEADING.match(line) for line in text.splitlines()):
            text = f"# {path.stem.replace('_', ' ')}\n\n{text}"
        text = _demote(text, 3)
        parts.append(_rewrite_links(text, path, page.file.src_uri, root, docs_dir).strip() + "\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Tables built from the package itself
# ---------------------------------------------------------------------------------------------

def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    line = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
    # Sphinx roles (:class:`~diffode.X`) read as plain code in a table cell.
    line = re.sub(r":\w+:`~?([^`]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", line)
    return line.replace("|", "\\|")


def _registry_table() -> str:
    from diffode.integrators import INTEGRATORS

    rows = ["| Name | Class | Integrates | Order | Model evaluations per step | Error estimate | Description |",
            "|---|---|---|:-:|:-:|:-:|---|"]
    for name in sorted(INTEGRATORS):
        entry = INTEGRATORS[name]
        integ = entry.factory()
        cls = type(integ)
        ref = f"[`{cls.__name__}`][{cls.__module__}.{cls.__qualname__}]"
        predict = getattr(integ, "predict", "")
        predicts = {"data": "$\\hat x_0$ (DPM-Solver++)", "noise": "$\\hat\\epsilon$ (DPM-Solver)"}.get(predict, predict)
        error = "yes" if integ.error_order is not None else "no"
        rows.append(f"| `{name}` | {ref} | {predicts} | {integ.order} | {integ.evals_per_step} | {error} "
                    f"| {entry.description} |")
    return "\n".join(rows) + "\n"


def _defining_module(package, name: str) -> str:
    obj = getattr(package, name)
    module = getattr(obj, "__module__", None)
    if inspect.ismodule(obj):
        return obj.__name__
    if module and module.startswith("diffode") and getattr(importlib.import_module(module), name, None) is obj:
        return module
    # Data objects (dicts, ...) have no __module__: find the submodule that defines them in its __all__.
    for sub in sorted(m for m in list(sys.modules) if m.startswith(package.__name__ + ".")):
        mod = sys.modules[sub]
        if name in getattr(mod, "__all__", ()) and getattr(mod, name, None) is obj:
            return sub
    return package.__name__


def _kind(obj) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "function"
    return "attribute"


def module_exists(name: str) -> bool:
    """Whether ``name`` can be imported (without importing it; its parent packages are imported)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _api_module(m: re.Match) -> str:
    name = m.group("module")
    if module_exists(name):
        return f"::: {name}\n"
    log.info("api: module %s does not exist (yet)", name)
    return (f'!!! note "Not available yet"\n    The module `{name}` is not part of this version of diffode; '
            "its reference appears here when it is.\n")


#: The packages whose ``__all__`` the API overview lists (those that do not exist are left out).
OVERVIEW_PACKAGES = ("diffode", "diffode.schedules", "diffode.models", "diffode.integrators", "diffode.sde",
                     "diffode.likelihood", "diffode.integrations", "diffode.compat")


def _api_overview() -> str:
    import diffode

    packages = [p for p in OVERVIEW_PACKAGES if module_exists(p)]
    out = []
    for pkg_name in packages:
        pkg = importlib.import_module(pkg_name)
        rows = [f"### `{pkg_name}`", "", "| Name | Kind | Defined in | Summary |", "|---|---|---|---|"]
        for name in sorted(getattr(pkg, "__all__", ()), key=str.lower):
            if name.startswith("__"):
                continue
            obj = getattr(pkg, name)
            kind = _kind(obj)
            if kind == "module":
                rows.append(f"| `{name}` | module | `{obj.__name__}` | {_first_line(obj)} |")
                continue
            module = _defining_module(pkg, name)
            ident = f"{module}.{name}"
            rows.append(f"| [`{name}`][{ident}] | {kind} | `{module}` | {_first_line(obj)} |")
        out.append("\n".join(rows))
    version = f"\nThis table was generated from diffode {diffode.__version__} when the site was built.\n"
    return "\n\n".join(out) + "\n" + version


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _cli_reference() -> str:
    import argparse

    from diffode.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {a.dest: a.help for a in commands._choices_actions}
    out = []
    for name, sub in commands.choices.items():
        usage = " ".join(sub.format_usage().replace("usage: ", "", 1).split())
        rows = ["| Option | Default | Description |", "|---|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
            if action.choices is not None:
                flags += " {" + ", ".join(map(str, action.choices)) + "}"
            elif action.nargs != 0:
                flags += f" `{action.metavar or action.dest.upper()}`" + (" ..." if action.nargs in ("+", "*") else "")
            default = action.default
            shown = ("" if default is None or default is False or default is argparse.SUPPRESS
                     else " ".join(map(str, default)) if isinstance(default, list) else str(default))
            required = " (required)" if action.required else ""
            rows.append(f"| {flags}{required} | {_cell(shown) and f'`{_cell(shown)}`'} | {_cell(action.help or '')} |")
        out += [f"### `diffode {name}`", "", _cell(sub.description or summaries.get(name, "")), "",
                "```text", usage, "```", "", *rows, ""]
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    if "<!--" not in markdown:
        return markdown
    markdown = INCLUDE.sub(lambda m: _include(m, page, config), markdown)
    if REGISTRY.search(markdown):
        markdown = REGISTRY.sub(lambda m: _registry_table(), markdown)
    if API_MODULE.search(markdown):
        markdown = API_MODULE.sub(_api_module, markdown)
    if CLI_REFERENCE.search(markdown):
        markdown = CLI_REFERENCE.sub(lambda m: _cli_reference(), markdown)
    if API_OVERVIEW.search(markdown):
        markdown = API_OVERVIEW.sub(lambda m: _api_overview(), markdown)
    return markdown


def on_config(config):
    # The hook imports diffode from the working tree when it is not installed (mkdocs run from the root).
    root = str(_root(config))
    if root not in sys.path:
        sys.path.insert(0, root)
    os.environ.setdefault("MPLBACKEND", "Agg")
    return config
