"""The CLI package stays thin: short command functions, small modules, every command found.

A command function parses options, calls the library and prints; table printing and the
like live in helpers. Counted from ``def`` to the function's last line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import typer.main

import advkit.cli

CLI_DIR = Path(advkit.cli.__file__).resolve().parent
MAX_COMMAND_LINES = 60
MAX_MODULE_LINES = 400


def _is_command_decorator(node: ast.expr) -> bool:
    """``@command(...)``, ``@app.command(...)``, ``@x.command`` and the like."""
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Name) and target.id == "command") or (isinstance(target, ast.Attribute) and target.attr == "command")


def _commands() -> list[tuple[str, str, int]]:
    """``(module, function, lines)`` of every function decorated as a command in advkit/cli/."""
    found = []
    for path in sorted(CLI_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(_is_command_decorator(d) for d in node.decorator_list):
                assert node.end_lineno is not None
                found.append((path.name, node.name, node.end_lineno - node.lineno + 1))
    return found


def test_no_command_function_is_over_60_lines():
    too_long = [f"{module}:{name} has {lines} lines" for module, name, lines in _commands() if lines > MAX_COMMAND_LINES]
    assert not too_long, f"command functions over {MAX_COMMAND_LINES} lines (move printing etc. into helpers): {too_long}"


def test_every_registered_command_is_a_decorated_function():
    """The length check sees every command the app runs, so it cannot pass by missing one."""
    decorated = {name for _, name, _ in _commands()}

    def callbacks(group: object) -> set[str]:
        names: set[str] = set()
        for sub in getattr(group, "commands", {}).values():
            if sub.callback is not None and not getattr(sub, "commands", None):
                names.add(sub.callback.__name__)
            names |= callbacks(sub)
        return names

    registered = callbacks(typer.main.get_command(advkit.cli.app))
    assert len(registered) >= 10
    assert registered <= decorated, f"commands not decorated where the layout check looks: {sorted(registered - decorated)}"


def test_no_cli_module_is_over_400_lines():
    too_long = {p.name: n for p in CLI_DIR.glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not too_long, f"CLI modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_the_counter_sees_a_long_command(tmp_path):
    """The check itself: a 61-line decorated function is caught, an undecorated one is not."""
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    source = f"@app.command()\ndef long_one() -> None:\n{body}\n    return None\n\ndef helper() -> None:\n{body}\n    return None\n"
    tree = ast.parse(source)
    long_ones = [
        n.name for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef) and any(_is_command_decorator(d) for d in n.decorator_list) and n.end_lineno - n.lineno + 1 > MAX_COMMAND_LINES
    ]
    assert long_ones == ["long_one"]
