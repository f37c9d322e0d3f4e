"""3D image encoders and the classifier built on them.

Every encoder maps a batch ``(N, C, X, Y, Z)`` to a feature vector ``(N, feature_dim)``, so that the
unimodal models of chapter 03 and the fusion models of a later chapter share them.

=============  ==============================================================================
``compact``    the default: four blocks of 3×3×3 convolution, batch normalisation and
               LeakyReLU, each halving the resolution, then global average pooling; about 0.1 M
               parameters, sized for ~100 training patients
``compact_instance``  the same with instance normalisation, which rescales every image by its own
               mean and spread, and so blurs the absolute uptake level and the amount of lesion
               that a PET and a lesion mask carry (see benchmarks/DESIGN.md for what it cost on the
               tuning cohort)
``resnet10``   MONAI's 3D ResNet-10 (about 14 M parameters)
``resnet18``   MONAI's 3D ResNet-18 (about 33 M parameters)
``densenet121`` MONAI's 3D DenseNet-121 (about 11 M parameters)
=============  ==============================================================================

:func:`build_encoder` makes an encoder by name; :class:`ImageClassifier` puts dropout and a linear head
(one logit of short PFS) on it, and :func:`classifier_from_checkpoint` takes one up from a fold checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

ENCODERS = ("compact", "compact_instance", "resnet10", "resnet18", "densenet121")


class CompactCNN3D(nn.Module):
    """A small 3D CNN: ``n_blocks`` × (conv → norm → LeakyReLU → max-pool), then global average pooling.

    ``norm``: ``"batch"`` (default) or ``"instance"``; ``width``: channels of the first block, doubled
    in each of the next.
    """

    def __init__(self, in_channels: int = 1, width: int = 8, n_blocks: int = 4, norm: str = "batch"):
        super().__init__()
        layers, c_in = [], in_channels
        norms = {"instance": lambda c: nn.InstanceNorm3d(c, affine=True), "batch": nn.BatchNorm3d}
        for i in range(n_blocks):
            c_out = width * 2**i
            layers += [
                nn.Conv3d(c_in, c_out, 3, padding=1, bias=False),
                norms[norm](c_out),
                nn.LeakyReLU(0.1, inplace=True),
                nn.MaxPool3d(2, ceil_mode=True),
            ]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.feature_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.body(x)), 1)


class MonaiEncoder(nn.Module):
    """A MONAI backbone with its classification layer removed, returning pooled features."""

    def __init__(self, name: str, in_channels: int = 1):
        super().__init__()
        from monai.networks import nets

        if name in ("resnet10", "resnet18"):
            self.net = getattr(nets, name)(spatial_dims=3, n_input_channels=in_channels, feed_forward=False,
                                           shortcut_type="A", bias_downsample=True)
            self.feature_dim = self.net.in_planes
        elif name == "densenet121":
            self.net = nets.DenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=1)
            self.feature_dim = self.net.class_layers.out.in_features
        else:  # pragma: no cover - guarded by build_encoder
            raise ValueError(name)
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "densenet121":
            head = self.net.class_layers
            return head.flatten(head.pool(head.relu(self.net.features(x))))
        return self.net(x)


def build_encoder(name: str = "compact", in_channels: int = 1) -> nn.Module:
    """An encoder by name (see the module docstring); it has a ``feature_dim`` attribute."""
    if name == "compact":
        return CompactCNN3D(in_channels, norm="batch")
    if name == "compact_instance":
        return CompactCNN3D(in_channels, norm="instance")
    if name in ENCODERS:
        return MonaiEncoder(name, in_channels)
    raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")


class ImageClassifier(nn.Module):
    """Encoder + dropout + linear head giving one logit (short PFS) per image."""

    def __init__(self, encoder: nn.Module, dropout: float = 0.3):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.feature_dim, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)).squeeze(1)


def classifier_from_checkpoint(checkpoint: dict) -> ImageClassifier:
    """The CNN a fold checkpoint of an image model holds (``config``, ``in_channels``, ``state_dict``),
    in evaluation mode on the CPU."""
    cfg = checkpoint["config"]
    net = ImageClassifier(build_encoder(cfg["encoder"], in_channels=int(checkpoint["in_channels"])), cfg["dropout"])
    net.load_state_dict(checkpoint["state_dict"])
    return net.eval()
