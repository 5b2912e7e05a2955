"""Data: tasks, rationales, tokenised sequences and packed batches. Knows nothing of the engine."""
