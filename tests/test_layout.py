"""The package's shape: which part may import what, no cycles, short functions, fast command, old paths."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.launch import ROOT, script_env

PACKAGE = ROOT / "lightning_bninit"
HEAVY = ("torch", "lightning", "pytorch_lightning", "torchmetrics")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules imported by ``path`` (every import statement, or only those executed at import time)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules(part: str) -> list[Path]:
    return sorted((PACKAGE / part).rglob("*.py"))


def _starts(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(("part", "forbidden"), [
    ("method", ("lightning", "pytorch_lightning", "lightning_bninit.monitoring", "lightning_bninit.callbacks",
                "lightning_bninit.experiments", "lightning_bninit.cli")),
    ("monitoring", ("lightning_bninit.method.update", "lightning_bninit.callbacks", "lightning_bninit.experiments",
                    "lightning_bninit.cli")),
    ("callbacks", ("lightning_bninit.experiments", "lightning_bninit.cli")),
    ("experiments", (*HEAVY, "lightning_bninit.method", "lightning_bninit.monitoring", "lightning_bninit.callbacks",
                     "lightning_bninit.cli")),
])
def test_each_part_imports_only_what_it_may(part: str, forbidden: tuple[str, ...]) -> None:
    bad = {}
    for path in _modules(part):
        wrong = sorted(name for name in _imports(path) if _starts(name, forbidden))
        if wrong:
            bad[str(path.relative_to(ROOT))] = wrong
    assert not bad


def test_no_import_cycles() -> None:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _imports(path, top_level_only=True) if m in modules and m != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_no_function_over_60_lines() -> None:
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=script_env())


CHECK_LIGHT = (
    "import sys\n"
    "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})\n"
    "assert not heavy, heavy[:5]\n"
)


def test_method_imports_no_lightning() -> None:
    proc = _run("import lightning_bninit.method, lightning_bninit.method.step_hooks, sys\n"
                "assert not [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]")
    assert proc.returncode == 0, proc.stderr


def test_command_help_and_report_import_neither_torch_nor_lightning(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text("".join(
        f'{{"seed": {s}, "arm": "{a}", "acc": {0.5 + 0.01 * s + (0.02 + 0.003 * (s % 3) if a == "bninit" else 0)}}}\n'
        for s in range(1, 5) for a in ("standard", "bninit")))
    for argv in (["--help"], ["report", "--help"], ["compare", "--help"], ["report", str(results), "--metric", "acc"]):
        proc = _run("import sys\nfrom lightning_bninit.experiments.command import main\n"
                    f"try:\n    code = main({argv!r})\nexcept SystemExit as e:\n    code = e.code\n"
                    "assert code == 0, code\n" + CHECK_LIGHT.format(heavy=HEAVY))
        assert proc.returncode == 0, (argv, proc.stderr[-2000:])


def test_python_dash_m_runs_the_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "lightning_bninit", "--help"], capture_output=True, text=True,
                          timeout=120, env=script_env())
    assert proc.returncode == 0 and "compare" in proc.stdout and "report" in proc.stdout


def test_public_api() -> None:
    import lightning_bninit
    from lightning_bninit import BNInit, BNMonitor, bn_param_groups, init_bn_
    from lightning_bninit.callbacks import BNInit as NewBNInit
    from lightning_bninit.cli import BNInitCLI

    assert BNInit is NewBNInit and BNMonitor.__module__ == "lightning_bninit.callbacks.bn_monitor"
    assert callable(bn_param_groups) and callable(init_bn_) and BNInitCLI.__name__ == "BNInitCLI"
    assert set(lightning_bninit.__all__) >= {"BNInit", "BNMonitor", "bn_param_groups", "init_bn_"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lightning_bninit.nope  # noqa: B018


@pytest.mark.parametrize("old", ["lightning_bninit.callback", "lightning_bninit.monitor", "lightning_bninit.recorder"])
def test_0_1_alias_modules_are_gone(old: str) -> None:
    """Removed in 0.3 (CHANGELOG.md): saved configs name lightning_bninit.BNInit, .BNMonitor and
    lightning_bninit.callbacks.run_recorder.RunRecorder instead."""
    import importlib

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


MISSING = "import sys\nsys.modules[{name!r}] = None  # as if not installed\n"


@pytest.mark.parametrize(("missing", "argv", "extra"), [
    ("scipy", ["report", "{results}", "--metric", "acc"], "experiments"),
    ("yaml", ["compare", "--config", "{results}"], "experiments"),
    ("rich", ["compare", "--config", "{exp}"], "experiments"),
])
def test_missing_optional_package_gives_one_line_naming_the_extra(tmp_path: Path, missing: str, argv: list[str],
                                                                   extra: str) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text('{"seed": 1, "arm": "standard", "acc": 0.5}\n{"seed": 1, "arm": "bninit", "acc": 0.6}\n'
                       '{"seed": 2, "arm": "standard", "acc": 0.4}\n{"seed": 2, "arm": "bninit", "acc": 0.7}\n')
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"script: {ROOT / 'tests' / 'support' / 'fake_cli.py'}\nseeds: 1\n")
    argv = [a.format(results=results, exp=exp) for a in argv]
    proc = _run(MISSING.format(name=missing) + "from lightning_bninit.experiments.command import main\n"
                f"sys.exit(main({argv!r}))")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("bninit: error: ") and f"pip install 'lightning-bninit[{extra}]'" in lines[0]


def test_cli_without_jsonargparse_names_the_cli_extra() -> None:
    proc = _run(MISSING.format(name="jsonargparse") + "try:\n    import lightning_bninit.cli\n"
                "except ImportError as err:\n    print(err)\n")
    assert proc.returncode == 0 and "pip install 'lightning-bninit[cli]'" in proc.stdout


def test_extras_match_the_parts() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    for heavy_extra in ("jsonargparse", "scipy", "rich", "pyyaml", "matplotlib"):
        assert heavy_extra not in base  # a plain install is what the callbacks need
    extras = project["optional-dependencies"]
    assert {"cli", "experiments", "examples", "test", "all"} <= set(extras)
    assert any("jsonargparse" in d for d in extras["cli"])
    assert {"pyyaml", "scipy", "numpy", "matplotlib", "rich"} <= {d.split(">")[0].split("=")[0]
                                                                  for d in extras["experiments"]}
