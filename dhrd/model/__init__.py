"""The model layer: backbones (HF directories, GGUF, the packaged SmolLM2), the dual-head
model and its heads, LoRA, the per-segment attention for packed rows, and the one
builder. Imports nothing from the engine, export or serving."""
