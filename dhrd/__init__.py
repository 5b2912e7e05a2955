"""Dual-Head Reasoning Distillation: a decoder-only LM trained as a classifier with a
pooled classification head (kept) and a rationale-supervised LM head (training only)."""

__version__ = "0.1.0"
