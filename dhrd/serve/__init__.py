"""Using an exported classifier: the lean format (lean_format, int8), batched prediction
(classifier, and ``dhrd predict`` in predict) and the HTTP service (http). Imports
nothing from the engine or export, nor DeepSpeed."""
