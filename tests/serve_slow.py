"""``dhrd serve`` (dhrd.serve.http.serve, signals and all) over a real lean directory whose
every batch first sleeps DELAY seconds: a server process slow enough that requests are
still in flight when a test signals it.

    python -m tests.serve_slow DELAY MODEL_DIR [dhrd serve flags]
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    from dhrd.serve.http import ServeConfig, build_parser, serve
    from dhrd.serve.served_model import load_model

    delay, cfg = float(argv[0]), ServeConfig(**vars(build_parser().parse_args(argv[1:])))
    model = load_model(cfg.model_dir, cfg.device, cfg.dtype, cfg.max_batch_size)
    fast = model.predict

    def slow(texts):
        time.sleep(delay)
        return fast(texts)

    model.predict = slow
    return serve(model, cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
