"""The wheel is a working install: conf/ inside it as fedkd/conf, every module of fedkd, clients, server and the
study sweeper (hydra_plugins), no tests or benchmarks, the `fedkd` command declared, and the config composed from
the unpacked wheel alone. Built offline
(no build isolation, no index) from a copy of the sources, since setuptools writes build/ into the tree it builds."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "fedkd", "clients", "server", "hydra_plugins", "conf", "tests", "bench")
PACKAGES = ("fedkd", "clients", "server", "hydra_plugins")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = out.glob("fedkd-*.whl")
    return built


def _names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def _dist_info(wheel: Path) -> str:
    """``fedkd-<version>.dist-info``, the wheel's metadata folder."""
    return "-".join(wheel.name.split("-", 2)[:2]) + ".dist-info"


def test_every_conf_yaml_is_in_the_wheel_under_fedkd_conf(wheel):
    names = _names(wheel)
    expected = {f"fedkd/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert "fedkd/conf/config.yaml" in expected and "fedkd/conf/aggregator/agre_fed.yaml" in expected
    assert expected <= names, sorted(expected - names)
    assert {n for n in names if n.startswith("fedkd/conf/")} == expected


def test_every_module_is_in_the_wheel_and_no_tests_or_benchmarks(wheel):
    """pyproject.toml lists the packages by hand (discovery cannot map conf/ to fedkd/conf): a new subpackage
    missing from that list fails here."""
    names = _names(wheel)
    modules = {p.relative_to(ROOT).as_posix() for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {*PACKAGES, _dist_info(wheel)}, tops  # no tests/, bench/, scripts/ or top-level conf/


def test_the_fedkd_command_is_declared(wheel):
    with zipfile.ZipFile(wheel) as zf:
        entry_points = zf.read(f"{_dist_info(wheel)}/entry_points.txt").decode()
    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    assert dict(parser["console_scripts"]) == {"fedkd": "fedkd.entry:main"}


def test_the_unpacked_wheel_composes_its_config_from_fedkd_conf(wheel, tmp_path):
    """What an installed wheel does: no conf/ next to the package, yet the default run composes (run from another
    directory, with only the unpacked wheel on the path for fedkd itself)."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    code = ("import fedkd.conf_dir as c; print(c.CONF_DIR); print(c.compose()['name']); "
            "from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; "
            "print(sorted(p.__name__ for p in Plugins.instance().discover(Sweeper)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    conf_dir, name, sweepers = proc.stdout.splitlines()
    assert (conf_dir, name) == (str(site / "fedkd" / "conf"), "cmnist_agre_fed_s0")
    assert sweepers == "['BasicSweeper', 'StudySweeper']"  # Hydra's own plugin scan finds the study sweeper
