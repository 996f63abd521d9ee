"""engine/ and adapters/ are pure science: they must import with Prefect unavailable."""

from __future__ import annotations

import subprocess
import sys

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
