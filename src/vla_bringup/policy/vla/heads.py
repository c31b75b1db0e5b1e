"""Action heads: a chunk of H future actions, plus `skill_done` and progress.

- `continuous` (default): H learned query tokens (plus one summary query) read the fused context
  with a small pre-norm transformer decoder (ACT-style), each action query emits one row of
  normalised actions; or `head_arch="mlp"` over the mean context token.
- `discrete`: RT-1 / RT-2 style action tokens: every (step, dimension) is a class among
  `action_bins` (256) uniform bins between the dataset's low and high for that step and
  dimension; decoding takes the centre of the most likely bin.
The summary query gives the `skill_done` logit (RT-1's terminate output) and a progress logit.
With `skill_heads` every output layer has one copy per skill primitive, and the primitive the
skill controller names picks the copy (the decoder stays shared). That triples the last layer:
small for the continuous head, but a discrete mlp head's last layer (H x D x 256 outputs) would
grow by tens of millions of parameters.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from vla_bringup.policy.vla.fusion import mlp


class ActionTokenizer(nn.Module):
    """Uniform bins per (step, dim) between `low` and `high` (H, D); out-of-range values clip."""

    def __init__(self, low, high, bins: int) -> None:
        super().__init__()
        self.bins = int(bins)
        # From config.json, not from the weights file: not persistent.
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32), persistent=False)
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32), persistent=False)

    @property
    def width(self) -> torch.Tensor:
        return (self.high - self.low) / self.bins

    def encode(self, actions: torch.Tensor) -> torch.Tensor:
        """(..., H, D) raw actions -> (..., H, D) bin indices (long)."""
        index = torch.floor((actions.float() - self.low) / self.width)
        return index.clamp(0, self.bins - 1).long()

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(..., H, D) bin indices -> bin centres (raw units)."""
        return self.low + (indices.float() + 0.5) * self.width


class ActionHead(nn.Module):
    def __init__(self, config, extra_per_step: int = 0, copies: int = 1) -> None:
        """`extra_per_step` more outputs per chunk row, returned apart as "extra" (B, H, n):
        the anchor logits of an `action_anchors` model. `copies` > 1: that many copies of the
        outputs, one per skill primitive; `forward` then needs the primitive's index."""
        super().__init__()
        self.copies = int(copies)
        d, h = config.d_model, config.action_horizon
        self.horizon, self.kind, self.arch = h, config.head, config.head_arch
        self.bins, self.action_dim = config.action_bins, config.action_dim
        per_step = self.action_dim * (self.bins if self.kind == "discrete" else 1)
        self.per_step, self.extra = per_step, int(extra_per_step)
        if self.arch == "transformer":
            self.queries = nn.Parameter(torch.randn(h + 1, d) * 0.02)
            layer = nn.TransformerDecoderLayer(d, config.n_heads, config.ffn_ratio * d,
                                               config.dropout,
                                               activation="gelu", batch_first=True,
                                               norm_first=True)
            self.decoder = nn.TransformerDecoder(layer, config.head_layers, norm=nn.LayerNorm(d))
            self.actions = nn.Linear(d, self.copies * (per_step + self.extra))
            self.summary = nn.Linear(d, self.copies * 2)
        else:
            outputs = self.copies * (h * (per_step + self.extra) + 2)
            self.net = nn.Sequential(nn.LayerNorm(d), mlp(d, outputs, 4 * d, config.dropout))

    def forward(self, context: torch.Tensor,
                primitive: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`primitive` (B,) int64: which copy of the outputs, for a head with `copies` > 1 (the
        index in policy.base.SKILLS; its range is not checked here, as that would wait on the
        device)."""
        batch, width = context.shape[0], self.per_step + self.extra
        if self.arch == "transformer":
            queries = self.queries.to(context.dtype).unsqueeze(0).expand(batch, -1, -1)
            out = self.decoder(queries, context)
            rows = self.actions(out[:, :self.horizon]).reshape(batch, self.horizon,
                                                               self.copies, width)
            summary = self.summary(out[:, -1]).reshape(batch, self.copies, 2)
        else:
            flat = self.net(context.mean(1)).reshape(batch, self.copies, -1)
            rows = flat[..., :-2].reshape(batch, self.copies, self.horizon, width).transpose(1, 2)
            summary = flat[..., -2:]
        rows, summary = self._select(rows, summary, primitive)
        result = {"done_logit": summary[:, 0], "progress_logit": summary[:, 1]}
        if self.extra:
            result["extra"], rows = rows[..., self.per_step:], rows[..., :self.per_step]
        if self.kind == "discrete":
            result["action_logits"] = rows.reshape(batch, self.horizon, self.action_dim,
                                                    self.bins)
        else:
            result["actions"] = rows  # normalised units
        return result

    def _select(self, rows: torch.Tensor, summary: torch.Tensor,
                primitive: torch.Tensor | None):
        """rows (B, H, copies, n), summary (B, copies, 2) -> (B, H, n), (B, 2)."""
        if self.copies == 1:
            return rows[:, :, 0], summary[:, 0]
        if primitive is None:
            raise ValueError(f"this head has {self.copies} copies of its outputs, one per skill "
                             "primitive: pass the primitive's index")
        batch, horizon, _, width = rows.shape
        index = primitive.view(-1, 1, 1)
        picked = rows.gather(2, index.unsqueeze(-1).expand(batch, horizon, 1, width))
        return picked[:, :, 0], summary.gather(1, index.expand(batch, 1, 2))[:, 0]


def head_loss(outputs: dict[str, torch.Tensor], actions_norm: torch.Tensor,
              action_bins: torch.Tensor | None, done: torch.Tensor, progress: torch.Tensor,
              done_weight: float = 1.0, progress_weight: float = 0.5,
              done_pos_weight: float | None = None) -> dict[str, torch.Tensor]:
    """Losses for one batch; `action_bins` (long) is needed by the discrete head only."""
    if "action_logits" in outputs:
        logits = outputs["action_logits"].float()
        action = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), action_bins.reshape(-1))
    else:
        action = F.smooth_l1_loss(outputs["actions"].float(), actions_norm.float(), beta=0.1)
    pos_weight = None if done_pos_weight is None else torch.tensor(
        done_pos_weight, device=done.device)
    done_loss = F.binary_cross_entropy_with_logits(outputs["done_logit"].float(), done.float(),
                                                   pos_weight=pos_weight)
    progress_loss = F.mse_loss(torch.sigmoid(outputs["progress_logit"].float()), progress.float())
    total = action + done_weight * done_loss + progress_weight * progress_loss
    return {"loss": total, "action": action.detach(), "done": done_loss.detach(),
            "progress": progress_loss.detach()}
