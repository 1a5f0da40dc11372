"""The networks: the paper's multi-scale Xception (MSXception) and a small CNN for CPUs.

Both take a batch of log-Mel spectrograms ``[batch, n_mels, frames]`` (or ``[batch, 1, n_mels,
frames]``) and return class logits ``[batch, n_classes]``. They are plain ``nn.Module``s; a checkpoint
rebuilds its model from :class:`ModelConfig`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from asc.errors import AscError

XCEPTION_WEIGHTS_FILE = "xception-43020ad28.pth"  # pretrainedmodels' ImageNet file name (its download URL's)
POOLINGS = ("gwrp", "avg")  # global weighted rank pooling (paper's code) or plain average pooling


@dataclass(frozen=True)
class ModelConfig:
    name: str = "msxception"  # "msxception" (paper) or "cnn" (small, for CPUs, tests and the demo)
    n_classes: int = 10  # the 10 scenes of DCASE2019 Task 1
    pretrained: bool = True  # paper: ImageNet weights for the Xception backbone (A1 / B1: False)
    weights: str | None = None  # ImageNet weights file; None: pretrainedmodels' cache file
    allow_download: bool = False  # with no file, let pretrainedmodels download it (needs a network)
    dropout: float = 0.3  # paper's code: drop_rate 0.3 before each of the two linear layers
    pooling: str = "gwrp"  # paper's code: global weighted rank pooling (decay 0.998); "avg" = plain mean
    gwrp_decay: float = 0.998  # paper's code
    width: int = 16  # small CNN: channels of its first block (doubling per block)

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise AscError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        if not 0 <= self.gwrp_decay <= 1:
            raise AscError(f"gwrp_decay must be between 0 and 1, not {self.gwrp_decay!r}")
        if not 0 <= self.dropout < 1:
            raise AscError(f"dropout must be in [0, 1), not {self.dropout!r}")
        if self.width < 1 or self.n_classes < 1:
            raise AscError(f"width and n_classes must be positive, not {self.width!r} and {self.n_classes!r}")


def default_weights_path() -> Path:
    """Where pretrainedmodels' download caches the ImageNet Xception: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / XCEPTION_WEIGHTS_FILE


class GlobalWeightedRankPooling(nn.Module):
    """Sort each channel's activations, descending, and average them with weights ``decay ** rank``.

    decay 1 is average pooling; decay 0 is max pooling. [batch, channels, h, w] -> [batch, channels]
    """

    def __init__(self, decay: float = 0.998):
        super().__init__()
        self.decay = decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        if self.decay >= 1.0:
            return flat.mean(-1)
        # Weights and sum in float32 whatever the input's type: under bf16 autocast, 0.998 ** rank
        # in bf16 (8 bits of mantissa) is off by up to a third over a few thousand ranks.
        with torch.autocast(x.device.type, enabled=False):
            dtype = torch.promote_types(flat.dtype, torch.float32)
            weights = self.decay ** torch.arange(flat.shape[-1], device=x.device, dtype=dtype)
            ranked = flat.to(dtype).sort(dim=-1, descending=True).values
            return (ranked * weights).sum(-1) / weights.sum()


def _as_image(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``[B, M, T]`` or ``[B, 1, M, T]`` -> ``[B, channels, M, T]`` (the log-Mel repeated, as the paper)."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x.expand(-1, channels, -1, -1) if channels > 1 else x


class MSXception(nn.Module):
    """The paper's multi-scale Xception: block11, block12 and relu(bn4(conv4)) of the pretrainedmodels
    Xception, each globally pooled and concatenated (728 + 1024 + 2048 = 3800 features), then
    Dropout -> Linear(3800, 512) -> Dropout -> Linear(512, n_classes).
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        import pretrainedmodels  # late: it imports torchvision, which only MSXception needs

        self.config = config
        backbone = pretrainedmodels.xception(num_classes=1000, pretrained=None)
        del backbone.last_linear  # the ImageNet head is not used
        if config.pretrained:
            load_xception_weights(backbone, config.weights, config.allow_download)
        self.backbone = backbone
        decay = config.gwrp_decay if config.pooling == "gwrp" else 1.0  # ModelConfig refuses other names
        self.pools = nn.ModuleList([GlobalWeightedRankPooling(decay) for _ in range(3)])
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(728 + 1024 + 2048, 512),
                                  nn.Dropout(config.dropout), nn.Linear(512, config.n_classes))

    def embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """The 3800 multi-scale features. x: [B, M, T] or [B, 1, M, T] -> [B, 3800]"""
        b = self.backbone
        x = _as_image(x, 3)
        x = b.relu(b.bn1(b.conv1(x)))
        x = b.relu(b.bn2(b.conv2(x)))
        for block in (b.block1, b.block2, b.block3, b.block4, b.block5, b.block6, b.block7, b.block8,
                      b.block9, b.block10):
            x = block(x)
        x11 = b.block11(x)
        x12 = b.block12(x11)
        x = b.relu(b.bn3(b.conv3(x12)))
        x = b.relu(b.bn4(b.conv4(x)))
        return torch.cat([pool(t) for pool, t in zip(self.pools, (x11, x12, x))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embeddings(x))


def xception_weights_file(path: str | os.PathLike | None, allow_download: bool = False) -> Path:
    """The ImageNet weights file a pretrained MSXception loads (``path``, or pretrainedmodels' cache
    file, downloaded there first when ``allow_download``); an AscError naming the path expected when
    it cannot be had."""
    target = Path(path) if path else default_weights_path()
    if not target.is_file():
        if path is None and allow_download:
            try:
                import pretrainedmodels  # late: as in MSXception

                pretrainedmodels.xception(num_classes=1000, pretrained="imagenet")  # fills the cache
            except Exception as exc:  # any network failure: say what was expected where
                raise AscError(f"{target}: ImageNet Xception weights missing and the download failed ({exc})") from None
        if not target.is_file():
            raise AscError(
                f"{target}: ImageNet Xception weights not found; put {XCEPTION_WEIGHTS_FILE} there, give its path "
                "(asc train --weights FILE; a space's weights: FILE), let pretrainedmodels download it (asc train "
                "--allow-download), or train without them (a space's pretrained: false; asc train --model cnn)"
            )
    return target


def load_xception_weights(backbone: nn.Module, path: str | os.PathLike | None, allow_download: bool = False) -> Path:
    """Load ImageNet weights (the pretrainedmodels file format) into an Xception backbone.

    ``path`` None means pretrainedmodels' own cache file; if that is absent and ``allow_download``,
    pretrainedmodels' download is tried. Weights that cannot be had are an AscError naming the path
    expected; there is never a silent fall-back to random weights.
    """
    target = xception_weights_file(path, allow_download)
    try:
        state = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AscError(f"{target}: not a readable PyTorch weights file ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "last_linear."))}
    own = backbone.state_dict()
    # BatchNorm's num_batches_tracked buffers exist since PyTorch 0.4.1; files saved before (as the
    # real xception-43020ad28.pth) lack them. They only count steps (momentum=None uses them), so a
    # file without them is complete: PyTorch's own strict loading accepts it too.
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or wrong:
        what = f"missing {missing[:3]}" if missing else f"wrong shapes for {wrong[:3]}"
        raise AscError(f"{target}: not Xception ImageNet weights ({what})")
    backbone.load_state_dict(state, strict=False)
    return target


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks, each followed by 2x2 average pooling, then time pooling and a linear layer.

    One 3x3 convolution per block and pooling from the first block on keep it to ~0.4 GFLOP a
    128 x 430 clip, so that a few hundred clips train in seconds on two CPU cores. The same input as
    MSXception (one channel instead of three copies).
    """

    def __init__(self, config: ModelConfig = ModelConfig(name="cnn")):
        super().__init__()
        self.config = config
        layers, channels = [], 1
        for i in range(4):
            out = config.width * 2**i
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        # Average over time, but keep 8 frequency regions: where in the spectrum matters for scenes.
        self.pool = nn.AdaptiveAvgPool2d((8, 1))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(channels * 8, config.n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(_as_image(x, 1))))


def build_model(config: ModelConfig) -> nn.Module:
    if config.name == "msxception":
        return MSXception(config)
    if config.name == "cnn":
        return SmallCNN(config)
    raise AscError(f"model must be 'msxception' or 'cnn', not {config.name!r}")
