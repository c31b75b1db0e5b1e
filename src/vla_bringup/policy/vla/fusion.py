"""Fusion of vision tokens, language tokens and the robot-state token, selectable by config.

Every fusion maps (vision (B, N, d), language (B, L, d), state (B, 1, d)) to context tokens
(B, M, d) that the action head reads:
- `early`: pooled vision, language and state concatenated, one MLP -> 1 token.
- `late`: one MLP per modality, merged by a learned softmax weighting -> 1 token.
- `dense`: stacked blocks of bidirectional cross-attention (vision attends to language+state and
  language+state attend to vision, both from the previous block's values) -> N + L + 1 tokens.
- `cross_attention`: language+state tokens as queries over the vision tokens (with
  self-attention among the queries) -> L + 1 tokens.
Pooling (early / late) keeps where things are: a spatial softmax gives, per learned keypoint
channel, the expected (x, y) over the feature grid, next to the mean of the tokens.
"""
from __future__ import annotations

import torch
from torch import nn


def mlp(inputs: int, outputs: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, outputs))


class FeedForward(nn.Module):
    def __init__(self, d: int, dropout: float, ratio: int = 2) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.net = mlp(d, d, ratio * d, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.net(self.norm(x)))


class CrossBlock(nn.Module):
    """Pre-norm: [self-attention], cross-attention of x over y, feed-forward."""

    def __init__(self, d: int, heads: int, dropout: float, self_attention: bool = False,
                 ffn_ratio: int = 2) -> None:
        super().__init__()
        self.self_norm = nn.LayerNorm(d) if self_attention else None
        self.self_attn = (nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
                          if self_attention else None)
        self.norm_q, self.norm_kv = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.ffn = FeedForward(d, dropout, ffn_ratio)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.self_attn is not None:
            h = self.self_norm(x)
            x = x + self.drop(self.self_attn(h, h, h, need_weights=False)[0])
        kv = self.norm_kv(y)
        x = x + self.drop(self.attn(self.norm_q(x), kv, kv, need_weights=False)[0])
        return self.ffn(x)


class AttentionPool(nn.Module):
    """Token states (B, L, D) -> (B, Q, D) unit vectors: Q learned queries attend over the
    tokens (multi-head, padding masked). Each query can learn to read the words it needs (a
    colour, a direction) instead of the sentence's mean, where one word is diluted by the rest.
    Unit length, like the sentence embedding they stand in for."""

    def __init__(self, dim: int, queries: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(queries, dim) * dim ** -0.5)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """`padding` (B, L) bool, True where there is no token (at least one per row is not)."""
        keys = self.norm(tokens)
        queries = self.queries.to(keys.dtype).unsqueeze(0).expand(keys.shape[0], -1, -1)
        pooled = self.attention(queries, keys, keys, key_padding_mask=padding,
                                need_weights=False)[0]
        return nn.functional.normalize(pooled, dim=-1)


def grid_coordinates(grid: int) -> torch.Tensor:
    """(grid * grid, 2) cell centres as (x, y) in [-1, 1], row by row as tokens are flattened."""
    axis = torch.linspace(-1.0, 1.0, grid)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs, ys], -1).reshape(-1, 2)


class VisionPool(nn.Module):
    """(B, N, d) tokens on a grid x grid map -> (B, d): mean token + spatial-softmax keypoints."""

    def __init__(self, d: int, grid: int, keypoints: int) -> None:
        super().__init__()
        self.register_buffer("coords", grid_coordinates(grid), persistent=False)
        self.logits = nn.Linear(d, keypoints)
        self.out = nn.Linear(d + 2 * keypoints, d)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        attention = self.logits(tokens).softmax(dim=1)  # (B, N, K), over the grid
        points = torch.einsum("bnk,nc->bkc", attention, self.coords.to(tokens.dtype))
        return self.out(torch.cat([tokens.mean(1), points.flatten(1)], -1))


class EarlyFusion(nn.Module):
    def __init__(self, config, grid: int) -> None:
        super().__init__()
        d = config.d_model
        self.pool = VisionPool(d, grid, config.keypoints)
        self.net = mlp(d * (config.language_tokens + 2), d, 2 * d, config.dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, vision, language, state):
        fused = torch.cat([self.pool(vision), language.flatten(1), state.flatten(1)], -1)
        return self.norm(self.net(fused)).unsqueeze(1)


class LateFusion(nn.Module):
    def __init__(self, config, grid: int) -> None:
        super().__init__()
        d, p = config.d_model, config.dropout
        self.pool = VisionPool(d, grid, config.keypoints)
        self.vision = mlp(d, d, 2 * d, p)
        self.language = mlp(d * config.language_tokens, d, 2 * d, p)
        self.state = mlp(d, d, 2 * d, p)
        self.modality_logits = nn.Parameter(torch.zeros(3))  # learned weighting
        self.norm = nn.LayerNorm(d)

    def weights(self) -> torch.Tensor:
        return self.modality_logits.softmax(0)

    def forward(self, vision, language, state):
        heads = torch.stack([self.vision(self.pool(vision)), self.language(language.flatten(1)),
                             self.state(state.flatten(1))], 1)  # (B, 3, d)
        weights = self.weights().to(heads.dtype)
        return self.norm((heads * weights[None, :, None]).sum(1)).unsqueeze(1)


class DenseFusion(nn.Module):
    def __init__(self, config, grid: int) -> None:
        super().__init__()
        d, h, p = config.d_model, config.n_heads, config.dropout
        r, n = config.ffn_ratio, config.fusion_layers
        self.to_context = nn.ModuleList(CrossBlock(d, h, p, ffn_ratio=r) for _ in range(n))
        self.to_vision = nn.ModuleList(CrossBlock(d, h, p, ffn_ratio=r) for _ in range(n))
        self.norm = nn.LayerNorm(d)

    def forward(self, vision, language, state):
        context = torch.cat([language, state], 1)
        for to_vision, to_context in zip(self.to_vision, self.to_context):
            vision, context = to_vision(vision, context), to_context(context, vision)
        return self.norm(torch.cat([vision, context], 1))


class CrossAttentionFusion(nn.Module):
    def __init__(self, config, grid: int) -> None:
        super().__init__()
        d, h, p = config.d_model, config.n_heads, config.dropout
        self.layers = nn.ModuleList(CrossBlock(d, h, p, True, config.ffn_ratio)
                                    for _ in range(config.fusion_layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, vision, language, state):
        queries = torch.cat([language, state], 1)
        for layer in self.layers:
            queries = layer(queries, vision)
        return self.norm(queries)


class GroundedKeypoints(nn.Module):
    """Where on the image the instruction points: one spatial softmax per asked position.

    Each of `points` queries (from the mean language token) scores every image cell; the
    softmax over the grid gives an expected (x, y) in [-1, 1], finer than a cell, and the
    attended feature. An MLP maps both to world positions. Only image and text come in.
    """

    def __init__(self, d: int, grid: int, points: int, outputs: int) -> None:
        super().__init__()
        self.points, self.scale = points, d ** -0.5
        self.query = nn.Linear(d, points * d)
        self.key = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.register_buffer("coords", grid_coordinates(grid), persistent=False)
        self.out = mlp(points * (2 + d), outputs, d, 0.0)

    def forward(self, vision: torch.Tensor, language: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> positions (B, outputs) and the grid logits (B, points, N), which a trainer can
        supervise with where the points really are in the image."""
        batch, d = vision.shape[0], vision.shape[-1]
        vision = self.norm(vision)
        queries = self.query(language.mean(1)).view(batch, self.points, d)
        logits = torch.einsum("bpd,bnd->bpn", queries, self.key(vision)) * self.scale
        weights = logits.softmax(-1)
        where = weights @ self.coords.to(weights.dtype)  # (B, P, 2)
        what = weights @ vision  # (B, P, d)
        return self.out(torch.cat([where.flatten(1), what.flatten(1)], 1)), logits


FUSION_CLASSES = {"early": EarlyFusion, "late": LateFusion, "dense": DenseFusion,
                  "cross_attention": CrossAttentionFusion}


def build_fusion(config, grid: int) -> nn.Module:
    return FUSION_CLASSES[config.fusion](config, grid)
