"""The package as installed: a wheel built from a copy of the repository holds one top-level
import name, `latent` (the root maps to it; indexer/, search/, generative/ and cli.py under it),
with its package data, and works from a directory outside the repository; an editable install
of latent-search maps `latent` to its checkout and nothing else."""

from __future__ import annotations

import json
import sysconfig
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "latent-search"
DIST_INFO_PREFIX = "latent_search-"
# what a fresh clone has beside the sources, left out of the copy that is built
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", ".pkg", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".hypothesis", ".ruff_cache", "artifacts")


def pip(*args, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--quiet", "--no-index", "--disable-pip-version-check"],
                          cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def outside_python(code: str, cwd: Path, pythonpath: str | None) -> str:
    """Run `code` in a fresh interpreter from `cwd`, with only `pythonpath` (or none) on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools in the venv")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES, symlinks=True)
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(source), cwd=work)
    (built,) = (work / "dist").glob("*.whl")
    return built


def test_the_wheel_holds_latent_and_its_data_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    dist_info = next(n.split("/")[0] for n in names if n.startswith(DIST_INFO_PREFIX))
    outside = [n for n in names if not n.startswith(("latent/", dist_info + "/"))]
    assert outside == [], f"top-level names besides latent: {outside}"
    assert zipfile.ZipFile(wheel).read(f"{dist_info}/top_level.txt").decode().split() == ["latent"]
    for module in ("__init__.py", "cli.py", "indexer/__init__.py", "indexer/encoders/__init__.py",
                   "search/collection.py", "generative/plugin.py", "indexer/data/sentences.jsonl"):
        assert f"latent/{module}" in names, module
    static = sorted(p.name for p in (ROOT / "search" / "static").iterdir() if p.is_file())
    assert static and all(f"latent/search/static/{name}" in names for name in static), static
    assert not [n for n in names if n.startswith(("latent/tests/", "latent/benchmarks/", "latent/docs/"))]
    entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "latent = latent.cli:main" in entry_points and "generative = latent.generative.plugin" in entry_points


def test_the_installed_wheel_imports_from_outside_the_repository(wheel, tmp_path):
    site = tmp_path / "site"
    pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    assert {p.name for p in site.iterdir()} - {"bin"} == {"latent", next(p.name for p in site.glob("*.dist-info"))}
    out = outside_python("import latent; print(latent.create); print(latent.__file__); "
                         "import latent.indexer.builtin as b; print(b.SENTENCES.is_file())", tmp_path, str(site))
    create, where, data = out.splitlines()
    assert create.startswith("<function create at ")
    assert Path(where) == site / "latent" / "__init__.py"
    assert data == "True"


def test_an_editable_install_maps_latent_to_its_checkout(tmp_path):
    # the installed metadata in site-packages, not the latent_search.egg-info that the editable
    # build leaves in the checkout (the current directory, first on sys.path here)
    found = list(metadata.distributions(name=DISTRIBUTION, path=[sysconfig.get_paths()["purelib"]]))
    if not found:
        pytest.skip(f"{DISTRIBUTION} is not installed in this environment")
    dist = found[0]
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    if not direct_url.get("dir_info", {}).get("editable"):
        pytest.skip(f"{DISTRIBUTION} is installed, but not editable")
    checkout = Path(direct_url["url"].removeprefix("file://"))
    assert (checkout / "pyproject.toml").is_file() and (checkout / "cli.py").is_file()
    assert dist.read_text("top_level.txt").split() == ["latent"]
    installed = [str(f) for f in dist.files or []]
    assert all(f.startswith((DIST_INFO_PREFIX, "__editable__", "__pycache__/__editable__", "../")) for f in installed), \
        installed
    out = outside_python("import latent, latent.indexer, latent.search.collection as c; "
                         "print(latent.__file__); print(latent.indexer.__file__); print(c.__file__)", tmp_path, None)
    assert [Path(p) for p in out.splitlines()] == [checkout / "__init__.py", checkout / "indexer" / "__init__.py",
                                                    checkout / "search" / "collection.py"]
