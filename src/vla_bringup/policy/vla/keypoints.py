"""Where are the target and the place? An instruction-conditioned keypoint detector at the
camera's own resolution.

Why a second vision path: seen from the scene camera a cube is about 8 px wide, and one pixel is
about 1 cm on the table, while grasping needs about 1 cm. Lite0's coarsest useful token grid
(stride 16) is 16 cm a cell along the table, and seven training runs showed that the fused tokens
could not recover the cube's position to better than 3.6 cm (docs/training_history.md). This module
looks only at a fixed crop of the workspace, at native resolution (no resizing below the
sensor's pixels), with a small CNN trained from scratch whose features are modulated by the
instruction (FiLM, as RT-1 conditions its EfficientNet). It outputs one heat map per position
(target object, place); the expectation of each map is a sub-pixel image point, and a small MLP
maps that point (plus the instruction and a held-object cue) to world coordinates: it learns the
camera's geometry from the demonstrations. The cue is the finger opening and the grasp point's
height, for the one case the image point cannot settle: a cube held in the hand is off the
table, and along the camera ray its point fits any height (without it, a cube lifted 15 cm came
out 12 cm too far, on the table). Not the whole state: given the grasp point's x and y, the map
learnt to answer "near the gripper" and lost 3-8 cm on cubes far from it (run 13).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vla_bringup.policy.vla.fusion import mlp

STRIDE = 4  # crop pixels per heat-map cell


class FiLM(nn.Module):
    """Per-channel scale and shift from the sentence embedding (identity at initialisation)."""

    def __init__(self, language_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Linear(language_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, language: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(language).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return x * (1.0 + scale) + shift


class ConditionedBlock(nn.Module):
    """Residual 3x3 conv (dilated: on the stride-4 grid, four blocks with dilations 1, 2, 4, 8
    see about 120 px) + GroupNorm + FiLM + SiLU."""

    def __init__(self, channels: int, dilation: int, language_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation,
                              bias=False)
        self.norm = nn.GroupNorm(min(8, channels), channels)
        self.film = FiLM(language_dim, channels)

    def forward(self, x: torch.Tensor, language: torch.Tensor) -> torch.Tensor:
        return x + nn.functional.silu(self.film(self.norm(self.conv(x)), language))


class PixelKeypoints(nn.Module):
    """Crop (B, 3, h, w) ImageNet-normalised + language (B, L) [+ held cue (B, C)] ->
    {"keypoint_logits": (B, P, h/4 * w/4), "keypoint_pixels": (B, P, 2) in crop pixels (x, y),
    "positions": (B, P * 3) normalised world positions}."""

    def __init__(self, crop_size: tuple[int, int], language_dim: int, points: int = 2,
                 channels: int = 32, dilations: tuple[int, ...] = (1, 2, 4, 8),
                 cue_dim: int = 0) -> None:
        super().__init__()
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        if min(self.crop_size) < 16 or any(s % STRIDE for s in self.crop_size):
            raise ValueError(f"keypoint crop must be a multiple of {STRIDE} px and >= 16 px, "
                             f"got {self.crop_size}")
        self.points = points
        half = channels // 2
        # Two stride-2 convs: the blocks run on a stride-4 grid (a cube is 2 cells); the
        # expectation over the map still resolves a fraction of a cell.
        self.stem = nn.Sequential(nn.Conv2d(3, half, 5, stride=2, padding=2, bias=False),
                                  nn.GroupNorm(min(8, half), half), nn.SiLU(),
                                  nn.Conv2d(half, channels, 3, stride=2, padding=1, bias=False),
                                  nn.GroupNorm(min(8, channels), channels), nn.SiLU())
        self.blocks = nn.ModuleList(ConditionedBlock(channels, d, language_dim)
                                    for d in dilations)
        self.out = nn.Conv2d(channels, points, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        height, width = self.crop_size[0] // STRIDE, self.crop_size[1] // STRIDE
        # Cell centres in crop pixels (pixel centres at integers): cell (i, j) covers pixels
        # [4j, 4j + 4) x [4i, 4i + 4).
        centre = (STRIDE - 1) / 2.0
        ys, xs = torch.meshgrid(torch.arange(height) * float(STRIDE) + centre,
                                torch.arange(width) * float(STRIDE) + centre, indexing="ij")
        self.register_buffer("cell_pixels", torch.stack([xs, ys], -1).view(-1, 2),
                             persistent=False)
        self.point_language = nn.Linear(language_dim, 16)
        self.to_world = nn.ModuleList(mlp(2 + 16 + cue_dim, 3, 64, 0.0) for _ in range(points))

    def forward(self, crop: torch.Tensor, language: torch.Tensor,
                cue: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """`language` (B, L): one instruction vector for every map; or (B, P, L): one per map,
        and the conditioned blocks then run once per map (the stem, which reads no language,
        runs once). `cue` (B, cue_dim), normalised: only the pixel-to-world map reads it."""
        batch = crop.shape[0]
        per_point = language.dim() == 3
        language = language.to(crop.dtype)
        x = self.stem(crop)
        conditioning = language.flatten(0, 1) if per_point else language
        if per_point:  # (B * P, C, h, w): row b * P + k is map k of example b
            x = x.repeat_interleave(self.points, 0)
        for block in self.blocks:
            x = block(x, conditioning)
        logits = self.out(x).flatten(2)  # (B [* P], P, cells)
        if per_point:  # pass k keeps only its own map
            logits = logits.view(batch, self.points, self.points, -1).diagonal(0, 1, 2)
            logits = logits.permute(0, 2, 1)
        logits = logits * torch.exp(self.log_temperature)
        weights = logits.float().softmax(-1)
        pixels = weights @ self.cell_pixels.float()  # (B, P, 2): expected point, sub-pixel
        scale = torch.tensor(self.crop_size[::-1], dtype=pixels.dtype, device=pixels.device)
        unit = (pixels / scale * 2.0 - 1.0).to(crop.dtype)  # [-1, 1] over the crop
        words = self.point_language(language)
        if not per_point:
            words = words.unsqueeze(1).expand(-1, self.points, -1)
        if cue is not None:
            cue = cue.to(words.dtype).unsqueeze(1).expand(-1, self.points, -1)
            words = torch.cat([words, cue], -1)
        positions = [head(torch.cat([unit[:, k], words[:, k]], -1))
                     for k, head in enumerate(self.to_world)]
        return {"keypoint_logits": logits, "keypoint_pixels": pixels,
                "positions": torch.cat(positions, -1)}


def keypoint_losses(outputs: dict[str, torch.Tensor], cell_pixels: torch.Tensor,
                    target_pixels: torch.Tensor, inside: torch.Tensor,
                    sigma_px: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Training losses of the detector against the true points (B, P, 2) in crop pixels.

    Cross-entropy of each heat map against a Gaussian blob (sigma in pixels) around its point,
    and the smooth-L1 distance (px) of the expected point: the first finds the right cube, the
    second pulls the expectation to sub-pixel. Points outside the crop (`inside` False, e.g. a
    cube lifted above it) are left out of both.
    """
    mask = inside.float()
    count = mask.sum().clamp(min=1.0)
    distance = ((cell_pixels[None, None] - target_pixels[:, :, None]) ** 2).sum(-1)
    blob = torch.exp(-(distance - distance.min(-1, keepdim=True).values) / (2 * sigma_px ** 2))
    blob = blob / blob.sum(-1, keepdim=True)
    log_probs = outputs["keypoint_logits"].float().log_softmax(-1)
    cross_entropy = (-(blob * log_probs).sum(-1) * mask).sum() / count
    error = nn.functional.smooth_l1_loss(outputs["keypoint_pixels"].float(), target_pixels,
                                         reduction="none").sum(-1)
    return cross_entropy, (error * mask).sum() / count
