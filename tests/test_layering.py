"""engine/ and adapters/ are pure science: they must import with Prefect unavailable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import matforge.flows.campaign

CODE = """
import sys
sys.modules["prefect"] = None
import pkgutil, importlib
import matforge.engine, matforge.adapters
for pkg in (matforge.engine, matforge.adapters):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(mod.name)
print("ok")
"""


def test_engine_and_adapters_import_without_prefect():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_no_bare_engine_package_installed():
    out = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('engine'))"],
        capture_output=True, text=True, cwd="/",
    )
    assert out.stdout.strip() == "None"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_campaign_flow_holds_prefect_and_no_science():
    """The round's science lives in engine/loop/round.py; the flow only wraps it."""
    flow = Path(matforge.flows.campaign.__file__)
    assert not _imported_modules(flow) & {"numpy", "scipy", "torch", "sklearn", "botorch"}
    tree = ast.parse(flow.read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    used |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    science = {"budget", "batch_size", "anomaly", "flag", "select", "propose", "Strategy",
               "surrogate_metrics", "count"}
    assert not used & science
