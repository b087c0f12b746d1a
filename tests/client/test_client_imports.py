"""The client needs nothing of the server. Its distribution is built and installed on its own
(``pip install --no-deps --target``, offline), then imported, made to build a frame and draw
it, in a subprocess where torch, Flask and every server package are unimportable (their
``sys.modules`` entries are None, so an ``import`` of any of them raises) and only the
installed client is on the path. Cheaper than a throwaway venv (which would have to download
pandas) and as strict about imports: any module of the client that imports one of them, at
any depth, fails here. A static check of the client's own import lines comes with it.
Cost: about 4 s (the install 2.5 s)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "client"
BLOCKED = [
    "torch", "flask", "marshmallow", "sqlalchemy", "gunicorn", "duckdb", "huey", "opacus",
    "transformers", "service", "mechanisms", "corpus", "models", "jobs", "util",
]  # fmt: skip
ALLOWED = {"requests", "pandas", "numpy", "matplotlib", "privtext"}

PROBE = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None
import matplotlib
matplotlib.use("Agg")
import privtext.client, privtext.client.plotting
from privtext.client.results import result_from
frame = result_from({{"kind": "count", "result": {{"value": 3, "interval": [1, 5]}}, "bias": []}})
frame.plot()
print(sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r} and sys.modules[m]))
"""


@pytest.mark.seconds  # pip builds and installs the client
def test_the_client_installs_and_imports_without_the_server_or_torch(tmp_path: Path) -> None:
    source, target = tmp_path / "client", tmp_path / "installed"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    installed = subprocess.run(
        [*pip, "--no-index", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    assert (target / "privtext" / "client" / "results.py").is_file()
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(blocked=BLOCKED)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,  # not the repository root: the server's packages are not on the path
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_clients_imports_are_stdlib_or_its_declared_dependencies() -> None:
    for module in (CLIENT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in ALLOWED or top in sys.stdlib_module_names, (module, name)
