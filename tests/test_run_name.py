"""A run is named after the aggregator preset chosen (agre_fed), not the registry key it inherits (agre), both
through the compose API and under ``@hydra.main`` (the ``fedkd`` command)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from hydra.core.hydra_config import HydraConfig

from fedkd.conf_dir import compose
from fedkd.validation import load_run_config


@pytest.mark.parametrize(
    ("overrides", "name", "registry_key"),
    [
        ([], "cmnist_agre_fed_s0", "agre"),
        (["aggregator=mean"], "cmnist_mean_s0", "mean"),
        (["aggregator=agre", "seed=3", "dataset=cmnist2"], "cmnist2_agre_s3", "agre"),
    ],
)
def test_composed_run_name_is_the_preset_name(overrides, name, registry_key):
    cfg = load_run_config(overrides)
    assert (cfg.name, cfg.aggregator.name) == (name, registry_key)


def test_compose_puts_hydra_config_back():
    """compose() borrows Hydra's global HydraConfig to resolve ``${hydra:...}``; its caller finds it as it was."""
    before = HydraConfig.instance().cfg
    compose(["aggregator=mean"])
    assert HydraConfig.instance().cfg is before


def test_the_command_names_the_run_after_the_preset(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedkd", "--cfg", "job", "--resolve"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["name"] == "cmnist_agre_fed_s0"
