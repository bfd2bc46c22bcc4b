"""Where conf/ (the Hydra config tree) is: top level next to fedkd/ in a source checkout or an editable install,
``fedkd/conf`` inside an installed wheel (pyproject.toml maps conf/ to the package ``fedkd.conf`` at build time)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
CANDIDATES = (_PACKAGE / "conf", _PACKAGE.parent / "conf")


def find_conf_dir() -> Path:
    """The first of the wheel's and the checkout's places that holds config.yaml."""
    for candidate in CANDIDATES:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"fedkd: no conf/config.yaml in {' or '.join(map(str, CANDIDATES))}; reinstall fedkd")


CONF_DIR = find_conf_dir()
