"""Packaging, checked without building: one version, py.typed, what the sdist holds, the extras,
and the README-style example. (`make dist-check` builds and installs for real; not in CI.)"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dmfx
from dmfx import _version

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pyproject():
    from dmfx.config import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_has_one_source(pyproject):
    project = pyproject["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert (pyproject["tool"]["setuptools"]["dynamic"]["version"]
            == {"attr": "dmfx._version.__version__"})
    assert dmfx.__version__ is _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", dmfx.__version__)
    written = [path.relative_to(ROOT).as_posix() for path in (ROOT / "dmfx").rglob("*.py")
               if re.search(r"^__version__\s*=", path.read_text(), re.M)]
    assert written == ["dmfx/_version.py"]


def test_py_typed_marker_is_shipped(pyproject):
    assert (ROOT / "dmfx" / "py.typed").is_file()
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["dmfx"]


def sdist_files(monkeypatch):
    """The files the sdist takes from MANIFEST.in, by setuptools' own template engine."""
    FileList = pytest.importorskip("setuptools.command.egg_info",
                                   reason="setuptools reads MANIFEST.in").FileList
    monkeypatch.chdir(ROOT)  # the engine works relative to the current directory
    files = FileList()
    files.findall()
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            files.process_template_line(line)
    return {Path(f).as_posix() for f in files.files}


def test_manifest_ships_what_a_build_from_the_sdist_needs(monkeypatch):
    shipped = sdist_files(monkeypatch)
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").rglob("*")
               if p.suffix in (".h", ".cpp", ".cu")}
    assert any(s.endswith(".h") for s in sources) and any(s.endswith(".cu") for s in sources)
    bundled = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dmfx/data/bundled").iterdir()}
    assert "dmfx/data/bundled/ml-100k-README.txt" in bundled  # the license and citation
    needed = sources | bundled | {
        "CMakeLists.txt", "tests/cpp/test_kernels.cpp", "setup.py", "setup.cfg",
        "pyproject.toml", "README.md", "dmfx/py.typed"}
    assert needed <= shipped, sorted(needed - shipped)
    assert not [f for f in shipped if f.endswith((".so", ".pyc"))]


def test_optional_extras(pyproject):
    extras = pyproject["project"]["optional-dependencies"]
    for extra, package in (("plot", "matplotlib"), ("parquet", "pyarrow"), ("pandas", "pandas"),
                           ("yaml", "pyyaml")):
        assert any(req.startswith(package) for req in extras[extra]), extra
    assert "import yaml" in (ROOT / "dmfx" / "config.py").read_text()  # why the yaml extra
    # the tests' optional imports are installed by `make test`, so CI runs them
    deps = next(line for line in (ROOT / "Makefile").read_text().splitlines()
                if "$(PIP) install numpy" in line)
    assert "pandas" in deps.split()


def test_convert_dense_dmf_example_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "convert_dense_dmf.py")],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT)}).stdout
    match = re.fullmatch(r"same outputs as nn.Linear; one Adam step: loss (\S+) -> (\S+)\n", out)
    assert match, out
    before, after = map(float, match.groups())
    assert after < before  # the converted layers train


def test_python_310_gets_the_toml_parser_311_has(pyproject):
    """requires-python allows 3.10, whose standard library has no tomllib (dmfx.config falls back
    to tomli, the same parser)."""
    assert pyproject["project"]["requires-python"] == ">=3.10"
    assert "tomli>=1.1; python_version < '3.11'" in pyproject["project"]["dependencies"]
