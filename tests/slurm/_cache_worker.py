"""One "node" of test_locks.test_cache_is_built_once_by_concurrent_jobs: builds or loads
the tokenised BoolQ training set in a shared cache dir, as the trainer's rank 0 does (dhrd/engine/trainer.py)
(under locks.cache_lock unless told not to), recording every example it tokenises.

    python _cache_worker.py TOKENIZER_DIR TRAIN RATIONALES CACHE_DIR COUNTS GO LOCK(0/1)

After its imports it writes GO.ready<pid> and waits for the file GO, so that the
workers race from the same moment; each tokenised example appends "<pid>" to COUNTS (and sleeps 50 ms, so a build
takes long enough for the race to matter). Prints the number of rows it got."""

import contextlib
import os
import sys
import time

from tokenizers import Tokenizer

from dhrd.config import DataArgs
from dhrd.data import sequences
from dhrd.data.pipeline import build_training_set
from dhrd.data.tasks import get_task
from dhrd.engine import locks

tok_dir, train, rationales, cache_dir, counts, go, use_lock = sys.argv[1:8]

original_build = sequences.SequenceBuilder.build


def counted_build(self, *args, **kwargs):
    with open(counts, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(0.05)
    return original_build(self, *args, **kwargs)


class Tok:
    """The fixture model's tokenizer.json behind the calls SequenceBuilder makes: no
    transformers (and so no torch) to import, which would take most of this test."""

    def __init__(self, path):
        self.t, self.eos_token_id = Tokenizer.from_file(path), 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": self.t.encode(text, add_special_tokens=add_special_tokens).ids}

    def get_vocab(self):
        return self.t.get_vocab()


sequences.SequenceBuilder.build = counted_build
task = get_task("boolq")
tok = Tok(os.path.join(tok_dir, "tokenizer.json"))
args = DataArgs(task="boolq", rationale_file=rationales, max_seq_len=128, pack_tokens=128)
examples = task.read(train)
open(f"{go}.ready{os.getpid()}", "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
with locks.cache_lock(cache_dir, delay=0.2) if use_lock == "1" else contextlib.nullcontext():
    ds, _ = build_training_set(task, examples, tok, (2, 3), args, cache_dir=cache_dir)
print(len(ds), flush=True)
