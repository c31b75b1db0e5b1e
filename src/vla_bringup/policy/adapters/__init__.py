"""Adapters: policy backends that wrap checkpoints of other VLA projects, loaded from local folders
(no hub downloads) and mapped onto the stack's joint-space `ActionChunk` contract."""
from __future__ import annotations

from pathlib import Path

# Weight files that only load by unpickling (which can run arbitrary code): never loaded here.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def pickle_weight_files(folder: Path) -> list[str]:
    """Names of the pickle weight files in `folder`, sorted, to name them in a refusal."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))
