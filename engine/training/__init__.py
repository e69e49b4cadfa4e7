"""Helpers of the training loop (engine/train.py): typed YAML, schedules, DeepSpeed config, checkpoints,
metrics, the collapse alarm, fault handling. Each file has one job; the loop itself stays in engine/train.py."""
