"""fedkd: federated robust distillation on Flower (science only; no Flower imports outside protocol/cli)."""

__version__ = "0.1.0"
