"""Training: processes (dist), the optimizer step (step), evaluation, checkpoints,
DeepSpeed configs (ds_config), telemetry (monitor), FLOPs, preemption, locks, and the
``Trainer`` (trainer) that runs them. ``python dhrd/train.py`` is its entry point."""
