"""From a training output (final/ or any ZeRO checkpoint, both written by the engine) to
what ships: the lean classifier (lean) and a standard Hugging Face sequence classifier
(hf). Export reads the engine's formats; the engine never imports export."""
