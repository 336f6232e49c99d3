"""The documentation's code runs: every ```python block of docs/**/*.md, and the shell commands it shows.

The Python blocks of one page run in order in one namespace, like the cells of a notebook, so a
page may build on its earlier blocks. A block preceded by the line ``<!-- skip-snippet: reason -->``
is not run (for the rare block that needs a network or a GPU). A page about an optional
dependency says so in a line ``<!-- requires: jax -->``: without that package installed its blocks
are skipped (with the reason), as the tests of the optional backends are.

Shell blocks, in the docs and in the README: every script and test path they name must exist, every
``diffode`` command line must be accepted by the command's own argument parser, and every
``diffode`` command is run (in a scratch folder, in this process) with its documented outcome
checked: exit status 0, or the status that a ``<!-- exit-status: N -->`` line before the block states, the report's key line,
and the files it writes. The other commands of a block preceded by ``<!-- skip-run: reason -->`` are
not run (installing packages, a network, the test suite itself), nor are ``pip``, ``mkdocs`` and
``python -m pytest`` anywhere; :func:`test_every_shell_command_runs_or_says_why_not` lists every
command that is not run, with its reason (``pytest -s`` shows it).
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import json
import pkgutil
import re
import shlex
import sys
import types
from pathlib import Path

import pytest
import torch

import diffode
from diffode.integrators import registry

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
                   re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!--\s*skip-snippet:\s*(?P<reason>.+?)\s*-->\s*$")
REQUIRES = re.compile(r"^<!--\s*requires:\s*(?P<modules>[\w., ]+?)\s*-->\s*$", re.MULTILINE)
PYTHON = {"python", "py", "python3"}
SHELL = {"bash", "sh", "shell", "console"}


def blocks(path: Path, languages: set[str]):
    """(first line number, code, skip reason or None) of each fenced block in ``languages``."""
    text = path.read_text(encoding="utf-8")
    for m in FENCE.finditer(text):
        if m.group("lang").lower() not in languages:
            continue
        start = text.count("\n", 0, m.start()) + 1
        before = [line for line in text[:m.start()].splitlines() if line.strip()]
        skip = SKIP.search(before[-1]) if before else None
        indent = m.group("indent")
        body = "".join(line[len(indent):] if line.startswith(indent) else line
                       for line in m.group("body").splitlines(keepends=True))
        yield start + 1, body, (skip.group("reason") if skip else None)


def pages(languages: set[str]) -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if any(True for _ in blocks(p, languages)))


def _id(path: Path) -> str:
    return path.relative_to(DOCS).as_posix() if DOCS in path.parents else path.name


def test_the_docs_have_code_to_test():
    found = pages(PYTHON)
    assert len(found) >= 6, [_id(p) for p in found]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """Fresh seeds, a scratch working directory, and no lasting change to global state."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    saved = dict(registry.INTEGRATORS)
    yield
    torch.set_default_dtype(dtype)
    registry.INTEGRATORS.clear()
    registry.INTEGRATORS.update(saved)


@pytest.mark.parametrize("page", [*pages(PYTHON), ROOT / "README.md"], ids=_id)
def test_python_snippets_run(page: Path, isolated):
    for mark in REQUIRES.finditer(page.read_text(encoding="utf-8")):
        for module_name in mark.group("modules").replace(",", " ").split():
            pytest.importorskip(module_name, reason=f"{_id(page)} documents the optional {module_name} backend")
    name = "docs_" + re.sub(r"\W", "_", _id(page))
    module = types.ModuleType(name)
    module.__file__ = str(page)
    sys.modules[name] = module  # classes and dataclasses defined in a snippet need their module
    ran, skipped = 0, []
    try:
        for line, code, skip in blocks(page, PYTHON):
            if skip:
                skipped.append(f"line {line}: {skip}")
                continue
            # Pad so that a traceback points at the line of the Markdown file.
            exec(compile("\n" * (line - 1) + code, str(page), "exec"), module.__dict__)
            ran += 1
    finally:
        del sys.modules[name]
        import matplotlib.pyplot as plt

        plt.close("all")
    if not ran:
        pytest.skip(f"every python block of {_id(page)} is marked skip-snippet: {'; '.join(skipped)}")


def test_skip_markers_are_rare_and_explained():
    skips = [(p, line, reason) for p in DOCS.rglob("*.md") for line, _, reason in blocks(p, PYTHON) if reason]
    total = sum(1 for p in DOCS.rglob("*.md") for _ in blocks(p, PYTHON))
    assert len(skips) <= max(4, total // 8), skips
    assert all(len(reason) > 10 for _, _, reason in skips), skips


# ---------------------------------------------------------------------------------------------
# Shell blocks: what they name must exist
# ---------------------------------------------------------------------------------------------

def _commands(code: str):
    for raw in code.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"&&|;|\|\|", line):
            part = part.strip().removeprefix("$ ").strip()
            if part:
                yield shlex.split(part)


def _diffode_accepts(argv: list[str]) -> str | None:
    """None if the ``diffode`` command line parser accepts ``argv``, else its complaint."""
    import contextlib
    import io

    from diffode.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as stop:
        if stop.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {stop.code}"
    return None


@pytest.mark.parametrize("page", pages(SHELL), ids=_id)
def test_shell_snippets_name_real_things(page: Path):
    problems = []
    for line, code, skip in blocks(page, SHELL):
        if skip:
            continue
        for argv in _commands(code):
            if argv[0] in ("python", "python3"):
                if len(argv) > 1 and argv[1].endswith(".py") and not (ROOT / argv[1]).is_file():
                    problems.append(f"line {line}: no script {argv[1]}")
                if argv[1:3] == ["-m", "pytest"]:
                    for arg in argv[3:]:
                        if not arg.startswith("-") and "/" in arg and not (ROOT / arg.split("::")[0]).exists():
                            problems.append(f"line {line}: no test path {arg}")
            elif argv[0] == "diffode":
                args = argv[1:argv.index(">")] if ">" in argv else argv[1:]
                if (complaint := _diffode_accepts(args)) is not None:
                    problems.append(f"line {line}: `{' '.join(argv)}`: {complaint}")
    assert not problems, problems


# ---------------------------------------------------------------------------------------------
# Shell blocks: the diffode commands run and do what the docs say
# ---------------------------------------------------------------------------------------------

README = ROOT / "README.md"
RUN_MARK = re.compile(r"<!--\s*(?P<kind>skip-run|exit-status):\s*(?P<value>.+?)\s*-->\s*$")
# Commands that are never run here, whatever the block, and why.
NOT_RUN = {"pip": "installs packages from the network", "mkdocs": "builds or serves the site (CI runs "
           "mkdocs build --strict)", "pytest": "runs the test suite, which runs this test"}


def shell_commands() -> list[tuple[str, int, list[str], str | None, int]]:
    """(page, line, argv, reason it is not run or None, expected exit status) of every shell command."""
    out = []
    for path in [*pages(SHELL), README]:
        text = path.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m.group("lang").lower() not in SHELL:
                continue
            line = text.count("\n", 0, m.start()) + 2
            before = [raw for raw in text[:m.start()].splitlines() if raw.strip()]
            mark = RUN_MARK.search(before[-1]) if before else None
            skip = mark.group("value") if mark and mark.group("kind") == "skip-run" else None
            status = int(mark.group("value")) if mark and mark.group("kind") == "exit-status" else 0
            name = path.relative_to(ROOT).as_posix()
            for argv in _commands(m.group("body")):
                program = "pytest" if argv[:3] == ["python", "-m", "pytest"] else argv[0]
                # A diffode command runs even in a skip-run block (after `pip install ... &&`): the
                # package is installed here, and the command needs nothing else.
                reason = NOT_RUN.get(program) or (skip if program != "diffode" else None)
                if reason is None and program != "diffode":
                    reason = f"no rule runs {program!r} commands"
                out.append((name, line, argv, reason, status))
    return out


def test_every_shell_command_runs_or_says_why_not():
    commands = shell_commands()
    assert any(argv[0] == "diffode" and reason is None for _, _, argv, reason, _ in commands)
    assert any(name == "README.md" for name, *_ in commands)
    not_run = [(f"{name}:{line}", " ".join(argv), reason) for name, line, argv, reason, _ in commands if reason]
    unexplained = [c for c in not_run if c[2].startswith("no rule")]
    assert not unexplained, f"run these commands in the docs test, or mark their block skip-run: {unexplained}"
    assert not [c for c in not_run if c[1].startswith("diffode")], not_run
    print("\n".join(f"not run: {where}: `{cmd}`: {reason}" for where, cmd, reason in not_run))


def _slow(argv: list[str]) -> bool:
    """Studies at the default step counts (128 to 1024) take tens of seconds."""
    return argv[1:2] == ["converge"] and "--steps" not in argv


RUNNABLE = [pytest.param(argv, status, id=f"{name}:{line}:{' '.join(argv[1:3])}",
                         marks=[pytest.mark.slow] if _slow(argv) else [])
            for name, line, argv, reason, status in shell_commands() if reason is None]


@pytest.mark.parametrize("argv,status", RUNNABLE)
def test_documented_diffode_commands_do_what_the_docs_say(argv, status, isolated, tmp_path, capsys):
    from diffode.cli import main

    args, redirect = argv[1:], None
    if ">" in args:
        i = args.index(">")
        args, redirect = args[:i], args[i + 1]
    code = main(args)
    out, err = capsys.readouterr()
    assert code == status, f"`{' '.join(argv)}` exited {code}, the docs say {status}:\n{out}\n{err}"
    assert "Traceback" not in err
    if redirect:
        (tmp_path / redirect).write_text(out)
    if "--json" in args:
        doc = json.loads(out)
        assert isinstance(doc, dict) and doc
    command = args[0]
    if command == "converge" and "--json" not in args:
        key = {0: "every fitted order is within", 1: "FAILED:", 3: "INCONCLUSIVE:"}[status]
        assert key in out, out
    if command == "converge" and "--json" in args:
        assert doc["status"] == status and all(r["verdict"] for r in doc["results"])
    if command == "demo":
        assert "RMSE against the RK45 ground truth" in out
        assert "--no-plot" in args or (tmp_path / "diffode_demo.png").is_file()
    if command == "sample" and "--out-dir" in args:
        from diffode.generate import verify

        assert verify(str(tmp_path / args[args.index("--out-dir") + 1])) == []  # every shard written
    elif command == "sample":
        target = args[args.index("-o") + 1] if "-o" in args else args[args.index("--out") + 1]
        assert (tmp_path / target).is_file()
    if command == "list":
        assert "integrators:" in out and "dpmpp_2m" in out


# ---------------------------------------------------------------------------------------------
# Examples in docstrings (rendered in the API reference)
# ---------------------------------------------------------------------------------------------

def _modules():
    """The diffode modules whose source has a docstring example (``>>>``), imported."""
    for info in pkgutil.walk_packages(diffode.__path__, prefix="diffode."):
        spec = importlib.util.find_spec(info.name)
        source = Path(spec.origin) if spec and spec.origin else None
        if (info.name.endswith("__main__") or source is None or source.suffix != ".py"  # compiled extensions
                or ">>>" not in source.read_text(encoding="utf-8")):
            continue
        try:
            yield importlib.import_module(info.name)
        except ImportError:
            continue  # a module for an optional dependency that is not installed (e.g. diffusers)


def test_docstring_examples_run():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tried = 0
    for module in [diffode, *_modules()]:
        for test in finder.find(module, module.__name__):
            if test.examples:
                runner.run(test)
                tried += len(test.examples)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {tried} docstring examples failed"
