"""Where conf/ (the Hydra config tree) is, and its composition with overrides: conf/ is top level next to fedkd/
in a source checkout or an editable install, ``fedkd/conf`` inside an installed wheel (pyproject.toml maps conf/ to
the package ``fedkd.conf`` at build time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent
CANDIDATES = (_PACKAGE / "conf", _PACKAGE.parent / "conf")


def find_conf_dir() -> Path:
    """The first of the wheel's and the checkout's places that holds config.yaml."""
    for candidate in CANDIDATES:
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"fedkd: no conf/config.yaml in {' or '.join(map(str, CANDIDATES))}; reinstall fedkd")


CONF_DIR = find_conf_dir()


def compose(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Compose conf/ with Hydra overrides (as on the command line) into a plain resolved dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from fedkd.config import ConfigError

    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        hydra_config.set_config(cfg)  # ${hydra:runtime.choices...} (the run name) resolves as under @hydra.main
        with open_dict(cfg):
            del cfg["hydra"]
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"cannot compose the config from conf/ with overrides {list(overrides)}: {err}") from err
    finally:
        hydra_config.cfg = previous
