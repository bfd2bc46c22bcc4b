"""fedkd's Hydra sweeper for studies (``hydra/sweeper=study``), found by Hydra's plugin discovery."""
