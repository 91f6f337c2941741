"""Train a small Llama-style model on the built-in text with the fp4 backend and with BF16, side by side.

    python examples/train.py                   # 30 steps, 2 layers, dim 128 (about 2 minutes on a 2-core CPU)
    python examples/train.py --steps 100 --layers 4 --dim 256 --device cuda

The fp4 run compiles the model with ``torch.compile(model, backend="fp4")``:
every linear layer but the output head runs its forward, input-grad and
weight-grad GEMMs in MXFP4 (Quartet).  The BF16 run uses ``torch.compile``'s
default backend.  Both start from the same weights and see the same batches.
On a machine without a GPU the fp4 ops run their PyTorch reference.
"""

import sys

from fp4.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
