"""The documentation cannot rot: every command it shows must exist in the CLI.

Every ``medvill ...`` line of a fenced code block in ``docs/`` (and every inline
```medvill ...``` span) is checked against the real command line: the subcommand exists and
each ``--option`` appears in that subcommand's ``--help`` output.  Lines of ``bash`` blocks
are commands a reader will paste, so they are also parsed by the CLI itself (required
options, value types, mask names, task names) and their ``--preset`` / ``--config`` /
``--set`` values are loaded with the strict config loader (unknown keys, wrong types).
``make`` targets must exist in the Makefile, and the imports of Python blocks must resolve.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
import typer.main
from _optional import optional_import
from typer.testing import CliRunner

from medvill.cli import app
from medvill.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
INLINE = re.compile(r"(?<!`)`(medvill [^`]+)`(?!`)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
TASK_COMMANDS = ("finetune", "evaluate")
SHELL_LANGS = {"bash", "sh", "shell", "console"}
LAUNCHERS = ("torchrun", "accelerate", "python", "python3")  # python -m medvill, torchrun -m medvill ...


@dataclass(frozen=True)
class Snippet:
    where: str  # file:line
    lang: str  # the fence's language ("" for inline code)
    text: str


def code_blocks(path: Path) -> list[Snippet]:
    """Fenced code blocks of a Markdown file (indented ones inside admonitions included)."""
    out, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        body, start = [], i + 1
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        out.append(Snippet(f"{path.relative_to(ROOT)}:{start}", lang, "\n".join(body)))
        i += 1
    return out


def doc_files() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def shell_commands(snippet: Snippet, program: str) -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of each line of a block that runs ``program`` (continuations joined,
    ``$ `` prompts and comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", snippet.text)
    out = []
    for offset, line in enumerate(joined.splitlines()):
        line = line.strip().removeprefix("$ ")
        if not line:
            continue
        argv = shlex.split(line, comments=True)
        if argv and (argv[0] == program or argv[0].endswith(f"/bin/{program}")):
            out.append((f"{snippet.where}+{offset + 1}", argv[1:]))
        elif program == "medvill" and argv and argv[0] in LAUNCHERS:  # torchrun ... -m medvill ARGS
            for i in range(len(argv) - 1):
                if argv[i] in ("-m", "--module") and argv[i + 1] == program:
                    out.append((f"{snippet.where}+{offset + 1}", argv[i + 2:]))
                    break
    return out


def documented_medvill() -> list[tuple[str, str, list[str]]]:
    """``(where, lang, argv)`` of every medvill command shown in the docs."""
    found = []
    for path in doc_files():
        for snippet in code_blocks(path):
            found += [(where, snippet.lang, argv) for where, argv in shell_commands(snippet, "medvill")]
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if FENCE.match(line):
                continue
            for m in INLINE.finditer(line):
                found.append((f"{path.relative_to(ROOT)}:{n}", "", shlex.split(m.group(1))[1:]))
    return found


COMMANDS = documented_medvill()
GROUP = typer.main.get_command(app)


def help_text(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200",
                                                            "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


_HELP: dict[tuple[str, ...], str] = {}


def cached_help(*path: str) -> str:
    if path not in _HELP:
        _HELP[path] = help_text(*path)
    return _HELP[path]


def is_group(command) -> bool:
    return hasattr(command, "get_command") and hasattr(command, "list_commands")


def resolve(where: str, argv: list[str]):
    """``(command path, leaf command, its arguments)``: subcommands of groups (``figures
    attention``) are followed down to the command that runs.  (typer vendors its own click, so
    the click objects are used by duck typing.)"""
    command = GROUP
    path: list[str] = []
    rest = list(argv)
    while is_group(command) and rest and not rest[0].startswith("-"):
        sub = command.get_command(typer.Context(command), rest[0])
        assert sub is not None and not sub.hidden, \
            f"{where}: `medvill {' '.join([*path, rest[0]])}` is not a command (see medvill {' '.join(path)} --help)"
        path.append(rest.pop(0))
        command = sub
    return path, command, rest


def test_the_docs_show_the_main_commands():
    shown = {argv[0] for _, _, argv in COMMANDS if argv}
    # the pipeline of the reproduction guide, at least
    assert {"prepare", "pretrain", "finetune", "evaluate", "compare", "label", "synth"} <= shown, shown


@pytest.mark.parametrize("where,lang,argv", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_documented_command_exists_with_its_options(where, lang, argv):
    options = [m.group(1) for arg in argv for m in [OPTION.match(arg.split("=", 1)[0])] if m]
    if not argv or argv[0].startswith("-"):  # `medvill --help`
        top = cached_help()
        for opt in options:
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", top), f"{where}: medvill has no {opt}"
        return
    if argv[0].isupper():  # a placeholder in prose: `medvill COMMAND --help`
        return
    path, _, _ = resolve(where, argv)
    text = cached_help(*path)
    name = " ".join(path)
    for opt in options:
        assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), \
            f"{where}: `medvill {name}` has no option {opt} (see medvill {name} --help)"


BASH = [(w, a) for w, lang, a in COMMANDS if lang in SHELL_LANGS and a and not a[0].startswith("-")]


@pytest.mark.parametrize("where,argv", BASH, ids=[c[0] for c in BASH])
def test_documented_command_parses_and_its_config_loads(where, argv):
    """A pasted command line is accepted by the CLI's parser and by the strict config loader."""
    path, command, rest = resolve(where, argv)
    assert not is_group(command), f"{where}: `medvill {' '.join(path)}` needs a subcommand"
    try:
        ctx = command.make_context(path[-1], rest, parent=typer.Context(GROUP, info_name="medvill"))
    except Exception as exc:  # click's UsageError / BadParameter (typer's vendored click)
        if not hasattr(exc, "format_message"):
            raise
        pytest.fail(f"{where}: medvill {' '.join(argv)}\n  rejected by the CLI: {exc.format_message()}")
    params = ctx.params
    if path[0] in TASK_COMMANDS:
        from medvill.recipes.finetune import TASKS

        assert params["task"] in TASKS, f"{where}: unknown task {params['task']!r}; tasks: {TASKS}"
    if "preset" in params:
        config = params.get("config")
        if config is not None:
            assert (ROOT / config).is_file(), f"{where}: --config {config} is not a file of the repository"
            config = ROOT / config
        try:
            load_config(params["preset"], config, params.get("set_") or [])
        except ValueError as exc:
            pytest.fail(f"{where}: the configuration of `medvill {' '.join(argv)}` does not load: {exc}")


def test_documented_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*)\s*:", makefile, re.MULTILINE))
    shown = []
    for path in [*doc_files(), ROOT / "README.md"]:
        for snippet in code_blocks(path) if path.suffix == ".md" else []:
            if snippet.lang in SHELL_LANGS:
                shown += [(w, argv) for w, argv in shell_commands(snippet, "make") if argv]
    assert shown, "the docs show no make command"
    for where, argv in shown:
        target = next(a for a in argv if "=" not in a and not a.startswith("-"))
        assert target in targets, f"{where}: the Makefile has no target {target!r}"


PYTHON = [s for p in doc_files() for s in code_blocks(p) if s.lang in ("python", "py")]


@pytest.mark.parametrize("snippet", PYTHON, ids=[s.where for s in PYTHON])
def test_python_examples_compile_and_their_imports_exist(snippet):
    tree = ast.parse(snippet.text, filename=snippet.where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medvill":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{snippet.where}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "medvill":
                    importlib.import_module(alias.name)


def test_the_docs_parser_finds_commands_options_and_failures(tmp_path, monkeypatch):
    """The checks above can fail: a made-up option, command, task and config key are caught."""
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text("Run `medvill bogus`.\n\n```bash\nmedvill pretrain --output x \\\n  --no-such-flag 1\n"
                    "medvill finetune nonsense --output y\n$ medvill pretrain --output z --set train.nope=1  # c\n"
                    "torchrun --nproc_per_node 2 -m medvill pretrain --mask nope --output w\n"
                    "medvill figures nothing --output v\npython scripts/other.py --output u\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "DOCS", tmp_path / "docs")
    found = {tuple(a) for _, _, a in documented_medvill()}
    assert found == {("bogus",), ("pretrain", "--output", "x", "--no-such-flag", "1"),
                     ("finetune", "nonsense", "--output", "y"), ("pretrain", "--output", "z", "--set", "train.nope=1"),
                     ("pretrain", "--mask", "nope", "--output", "w"), ("figures", "nothing", "--output", "v")}
    for where, lang, argv in documented_medvill():
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            if argv[0] == "bogus" or "--no-such-flag" in argv or "nothing" in argv:
                test_documented_command_exists_with_its_options(where, lang, argv)
            else:
                test_documented_command_parses_and_its_config_loads(where, argv)


def test_api_reference_covers_the_core_modules():
    directives = {m for p in (DOCS / "reference").glob("*.md")
                  for m in re.findall(r"^:::\s*(\S+)", p.read_text(), re.MULTILINE)}
    for module in ("config", "modeling", "data", "metrics", "generation", "tasks", "train", "recipes.pretrain",
                   "recipes.finetune", "recipes.evaluate", "recipes.compare", "inference", "figures"):
        assert f"medvill.{module}" in directives, f"no API reference page renders medvill.{module}"
    assert "medvill" in directives  # the catch-all page: modules without a page of their own


def test_rst_roles_become_links_or_code():
    """The docs' griffe extension leaves no reST role in any docstring it renders."""
    griffe = optional_import("griffe")  # part of the docs / dev extras
    spec = importlib.util.spec_from_file_location("griffe_rst_roles", DOCS / "griffe_rst_roles.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    pkg = griffe.load("medvill", search_paths=[str(ROOT / "src")], extensions=griffe.load_extensions(ext.RstRoles))
    leftovers, links = [], 0

    def walk(obj):
        nonlocal links
        if isinstance(obj, griffe.Alias):
            return
        if obj.docstring is not None:
            if ext.ROLE.search(obj.docstring.value):
                leftovers.append(obj.path)
            links += len(re.findall(r"\]\[medvill\.", obj.docstring.value))
        for member in obj.members.values():
            walk(member)

    walk(pkg)
    assert not leftovers, f"reST roles left in: {leftovers[:5]}"
    assert links > 20  # cross-references were made (data/, tasks/, generation ... use many roles)
    # a role naming a sibling in the same module resolves to its full path
    doc = pkg["generation"].docstring.value
    assert "[`generate_naive`][medvill.generation.generate_naive]" in doc
