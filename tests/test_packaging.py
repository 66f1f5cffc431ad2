"""A non-editable install must carry every data file the packages read (prompts, examples, assets)."""
from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_package_data_covers_every_non_python_file():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]
    tracked = subprocess.run(["git", "ls-files", "llava_lite", "data_tools"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    if not tracked:  # not a git checkout: look at the tree
        tracked = [str(p.relative_to(ROOT)) for pkg in ("llava_lite", "data_tools") for p in (ROOT / pkg).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts]
    data_files = [f for f in tracked if not f.endswith(".py")]
    assert any(f.startswith("data_tools/examples/") for f in data_files)
    assert any(f.startswith("data_tools/prompts/") for f in data_files)
    missing = []
    for f in data_files:
        package, rel = f.split("/", 1)
        if not any(fnmatch.fnmatch(rel, pat) and rel.count("/") == pat.count("/") for pat in patterns.get(package, [])):
            missing.append(f)
    assert not missing, f"not in [tool.setuptools.package-data] of pyproject.toml: {missing}"
