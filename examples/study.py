"""The accuracy study: the same Llama-style models trained in bf16 and in FP4 on real text, held-out loss compared.

    python examples/study.py --quick                                  # a few minutes on a CPU
    fp4 study prepare --out corpus.fp4pack                            # where the corpus is installed
    python examples/study.py --pack corpus.fp4pack --preset tiny      # on a GPU, offline

Every run starts from the same weights and sees the same batches; the
held-out documents are never trained on.  ``docs/accuracy.md`` explains the
corpus, the split, the models and the outputs.
"""

import sys

from fp4.cli import main

if __name__ == "__main__":
    sys.exit(main(["study", *sys.argv[1:]]))
