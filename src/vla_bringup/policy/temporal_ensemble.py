"""Temporal ensembling of overlapping action chunks (as in ACT), by absolute time.

A policy that re-plans every frame and whose chunks say "close the gripper in 0.8 s" can say the
same thing at every frame: only the first rows of each chunk are ever executed, so the grasp
never comes (docs/training_history.md, run 12). Ensembling makes each chunk a commitment: the
target for a time t is the weighted mean of what every recent chunk predicted for t, so a
prediction made 0.8 s ago for "now" counts as much as the newest one. Chunks are aligned by their
stamps, with linear interpolation between rows, so inference that runs late or irregularly still
lines up.

Plain numpy, no torch and no ROS: any backend can wrap its chunks in it.
"""
from __future__ import annotations

import collections
import math

import numpy as np


class TemporalEnsemble:
    """Blend each new chunk with the earlier chunks that still cover its rows' times.

    `decay` (per row interval of age, >= 0) weighs a prediction made `a` intervals before the
    newest one by exp(-decay * a): 0 is a plain mean (ACT's choice is nearly that); larger values
    react faster to change and commit less.
    """

    def __init__(self, decay: float = 0.0, max_chunks: int = 32) -> None:
        if not (math.isfinite(decay) and decay >= 0.0):
            raise ValueError(f"decay must be a finite number >= 0, got {decay}")
        if max_chunks < 1:
            raise ValueError("max_chunks must be >= 1")
        self.decay = float(decay)
        self._chunks: collections.deque = collections.deque(maxlen=int(max_chunks))

    def reset(self) -> None:
        """Forget every chunk (a new skill, or time that went backwards)."""
        self._chunks.clear()

    def __call__(self, stamp: float, dt: float, positions: np.ndarray) -> np.ndarray:
        """The chunk predicted at `stamp` (row k due at stamp + (k + 1) dt) -> the blended chunk
        (same shape). The new chunk is remembered for the next calls."""
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim != 2 or not np.all(np.isfinite(positions)):
            raise ValueError("positions must be a finite (H, N) array")
        if not dt > 0:
            raise ValueError(f"dt must be > 0, got {dt}")
        if self._chunks and (stamp < self._chunks[-1][0] or
                             self._chunks[-1][2].shape[1] != positions.shape[1]):
            self.reset()
        times = stamp + dt * np.arange(1, len(positions) + 1)
        total = positions.copy()
        weights = np.ones(len(positions))
        for old_stamp, old_dt, old in self._chunks:
            rows = (times - old_stamp) / old_dt - 1.0  # fractional row of the old chunk
            covered = rows <= len(old) - 1 + 1e-6  # stamps are floats: 0.6 / 0.1 - 1 > 5
            if not covered.any():
                continue
            rows = np.clip(rows, 0.0, len(old) - 1)
            low = np.floor(rows[covered]).astype(int)
            high = np.minimum(low + 1, len(old) - 1)
            fraction = (rows[covered] - low)[:, None]
            values = old[low] * (1.0 - fraction) + old[high] * fraction
            weight = math.exp(-self.decay * (stamp - old_stamp) / dt)
            total[covered] += weight * values
            weights[covered] += weight
        self._chunks.append((float(stamp), float(dt), positions))
        # Chunks whose last row is already due add nothing to later calls.
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][2]) * \
                self._chunks[0][1] <= stamp + dt:
            self._chunks.popleft()
        return total / weights[:, None]
