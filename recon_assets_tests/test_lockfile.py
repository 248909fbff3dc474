"""Reproducible installs (issue 38): what bootstrap, CI and the image install is the lockfile,
pinned with hashes, and the suite runs on exactly those versions."""

import pathlib
import re
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

REPO = pathlib.Path(__file__).resolve().parents[1]
ENTRY = re.compile(r"^([A-Za-z0-9._-]+)(\[[^\]]*\])?==([^\s\\]+)")


def locked(name: str) -> dict[str, tuple[str, int]]:
    """Package -> (pinned version, number of hashes) of one lockfile."""
    out: dict[str, tuple[str, int]] = {}
    current = None
    for line in (REPO / name).read_text().splitlines():
        found = ENTRY.match(line)
        if found:
            current = canonicalize_name(found.group(1))
            assert current not in out, f"{name}: {current} pinned twice"
            out[current] = (found.group(3), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = out[current]
            out[current] = (version, hashes + 1)
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"{name}: not a pinned requirement: {line!r}")
    return out


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return {canonicalize_name(Requirement(s).name) for s in specs}


def test_every_dependency_is_pinned_with_hashes_and_both_locks_agree():
    runtime, test = locked("requirements.txt"), locked("requirements-test.txt")
    assert declared() <= set(runtime), sorted(declared() - set(runtime))
    assert declared("test") <= set(test), sorted(declared("test") - set(test))
    for name, lock in (("requirements.txt", runtime), ("requirements-test.txt", test)):
        unhashed = sorted(p for p, (_v, hashes) in lock.items() if hashes == 0)
        assert not unhashed, f"{name}: pinned without a hash: {unhashed}"
    # The image runs the versions the suite tested.
    differ = {p: (runtime[p][0], test[p][0]) for p in set(runtime) & set(test)
              if runtime[p][0] != test[p][0]}
    assert not differ, differ


def test_the_suite_runs_on_the_locked_versions():
    """What this environment has installed is what requirements-test.txt pins (bootstrap
    installed it from there): a green suite speaks for the lock."""
    wrong = {}
    for name, (version, _hashes) in locked("requirements-test.txt").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"locked vs installed: {wrong}"


def test_bootstrap_and_the_image_install_from_the_locks():
    bootstrap = (REPO / "scripts" / "bootstrap.sh").read_text()
    assert "--require-hashes -r requirements-test.txt" in bootstrap
    assert "--no-deps -e ." in bootstrap
    assert not re.search(r"pip install[^\n]*-e \"?\.\[", bootstrap), "an unlocked extra install"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "RUN pip install --require-hashes -r requirements.txt" in dockerfile
    assert "RUN pip install --no-deps ." in dockerfile
