"""Model registry. Every model exposes ``features(x)`` and a final linear ``head`` so that last-layer methods
(AGRE-KD's closed form, DFR) can address the penultimate representation uniformly."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedkd.registry import Registry

MODELS = Registry("model")


class FeatureClassifier(nn.Module):
    """A feature extractor followed by a linear head: logits = head(features(x))."""

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@MODELS.register("cnn")
def small_cnn(input_shape: tuple[int, int, int], num_classes: int, width: int = 16) -> FeatureClassifier:
    """Two conv blocks and a hidden layer: the teacher/student for 28x28 inputs."""
    channels, height, width_px = input_shape
    body = nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (height // 4) * (width_px // 4), 64),
        nn.ReLU(),
    )
    return FeatureClassifier(body, 64, num_classes)


@MODELS.register("cnn_wide")
def wide_cnn(input_shape: tuple[int, int, int], num_classes: int) -> FeatureClassifier:
    """The two-block CNN at twice the channels (32, 64): a teacher larger than the ``cnn`` student (2.1x the
    parameters, 0.49x its CPU training throughput), standing in for AGRE-KD's MobileNetV2 teachers where those
    do not fit a CPU study (docs/results.md)."""
    return small_cnn(input_shape, num_classes, width=32)


@MODELS.register("mobilenet_v2", batch_norm=True)
def mobilenet_v2(input_shape: tuple[int, int, int], num_classes: int) -> FeatureClassifier:
    """torchvision's MobileNetV2 (AGRE-KD's Colored MNIST teacher), adapted to 28x28 inputs: the stem takes the
    input's channels at stride 1, so that the last feature map is 4x4 rather than 1x1; ``features`` are the 1280
    pooled channels (torchvision's dropout before the classifier is dropped with its classifier)."""
    from torchvision.models import mobilenet_v2 as torchvision_mobilenet_v2

    net = torchvision_mobilenet_v2()
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(input_shape[0], stem.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    body = nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return FeatureClassifier(body, net.last_channel, num_classes)


@MODELS.register("mlp")
def mlp(input_shape: tuple[int, int, int], num_classes: int, hidden: int = 128) -> FeatureClassifier:
    """One hidden layer on flattened pixels."""
    channels, height, width_px = input_shape
    body = nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width_px, hidden), nn.ReLU())
    return FeatureClassifier(body, hidden, num_classes)


def _resnet18(input_shape: tuple[int, int, int], num_classes: int, cifar_stem: bool) -> FeatureClassifier:
    """torchvision's ResNet-18 as body (its ``fc`` an identity, so ``features`` are the 512 pooled channels) and
    our linear ``head``. The first convolution takes the input's channels (1 for MNIST)."""
    from torchvision.models import resnet18

    body = resnet18()
    if cifar_stem:
        body.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
        body.maxpool = nn.Identity()
    elif input_shape[0] != 3:
        body.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    body.fc = nn.Identity()
    return FeatureClassifier(body, 512, num_classes)


@MODELS.register("resnet18", batch_norm=True)
def resnet18_imagenet(input_shape: tuple[int, int, int], num_classes: int) -> FeatureClassifier:
    """ResNet-18 with the ImageNet stem (7x7 stride-2 convolution, max-pool): for Waterbirds / CelebA-sized
    inputs and for ImageNet weights (``pretrained_path``)."""
    return _resnet18(input_shape, num_classes, cifar_stem=False)


@MODELS.register("resnet18_cifar", batch_norm=True)
def resnet18_cifar(input_shape: tuple[int, int, int], num_classes: int) -> FeatureClassifier:
    """ResNet-18 with the CIFAR stem (3x3 stride-1 convolution, no max-pool), which keeps 32x32 inputs at 4x4
    before the pooling instead of 1x1."""
    return _resnet18(input_shape, num_classes, cifar_stem=True)


def load_pretrained(model: FeatureClassifier, path: str) -> None:
    """Start the body from a local state dict (torchvision format, e.g. ImageNet ResNet-18 weights); never
    downloads. Its classifier ``fc.*`` is dropped (the head is ours, for our classes), as are tensors whose shape
    differs from the body's (the CIFAR stem's 3x3 ``conv1``, a grayscale input); any other mismatch is an error."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained weights {path} not found; weights are never downloaded: save a state "
                                "dict there (e.g. torchvision's resnet18-f37072fd.pth) or leave pretrained_path empty")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.body.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    reshaped = {k for k, v in state.items() if k in own and own[k].shape != v.shape}
    missing, unexpected = model.body.load_state_dict({k: v for k, v in state.items() if k not in reshaped},
                                                     strict=False)
    if unexpected or set(missing) - reshaped:
        raise ValueError(f"{path} does not fit the model's body: missing {sorted(set(missing) - reshaped)}, "
                         f"unexpected {sorted(unexpected)}")


def build_model(arch: str, input_shape: tuple[int, int, int], num_classes: int, seed: int,
                pretrained_path: str = "") -> nn.Module:
    """A freshly initialised model, its body loaded from ``pretrained_path`` when given; the seed fixes the
    weights that are not loaded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS[arch](input_shape, num_classes)
    if pretrained_path:
        load_pretrained(model, pretrained_path)
    return model
