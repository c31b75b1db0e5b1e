"""Adapters: policy backends that wrap checkpoints of other VLA projects, loaded from local folders
(no hub downloads) and mapped onto the stack's joint-space `ActionChunk` contract."""
