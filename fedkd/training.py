"""Plain supervised loops shared by teachers and students: SGD over minibatches, batched inference."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from fedkd.device import model_device

BatchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def epoch_orders(generator: np.random.Generator, num_examples: int, epochs: int) -> Iterator[np.ndarray]:
    """Each epoch's shuffled order, drawn as ``run_epochs`` draws it: drawing them without training leaves the
    generator where training would have left it."""
    for _ in range(epochs):
        yield generator.permutation(num_examples)


def run_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    num_examples: int,
    batch_loss: Callable[[np.ndarray], torch.Tensor],
    epochs: int,
    batch_size: int,
    generator: np.random.Generator,
    epoch_end: Callable[[], None] | None = None,
) -> float:
    """Shuffle, batch and step; ``batch_loss(indices)`` returns the loss of one minibatch; ``epoch_end``, when
    given, is called after each epoch (model selection).

    Returns the mean minibatch loss of the last epoch.
    """
    model.train()
    last = 0.0
    for order in epoch_orders(generator, num_examples, epochs):
        losses = []
        for start in range(0, num_examples, batch_size):
            loss = batch_loss(order[start : start + batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        last = float(np.mean(losses))
        if epoch_end is not None:
            epoch_end()
            model.train()
    return last


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``model`` on inputs ``x`` (numpy, [N, ...]) in eval mode, computed on the model's device and
    returned on the CPU. Batches of 256: on the CPU the CNN's activations for 1024 images fall out of the cache
    and inference takes twice as long (bench figures in docs/performance.md), with the same bits."""
    model.eval()
    device = model_device(model)
    outputs = [model(torch.from_numpy(x[i : i + batch_size]).to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0)
