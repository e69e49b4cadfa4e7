"""Helpers of the training loop (engine/train.py): typed YAML, schedules, DeepSpeed config, checkpoints and
the seal that marks those this machine wrote, metrics, the collapse alarm, fault handling. Each file has one
job; the loop itself stays in engine/train.py."""
