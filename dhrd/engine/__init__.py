"""Training: processes (dist), the optimizer step (step), evaluation, checkpoints,
DeepSpeed configs (ds_config), logging (monitor), FLOPs, preemption, locks, and the
``Trainer`` (trainer) that runs them. ``python dhrd/train.py`` is its entry point."""
