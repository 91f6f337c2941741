"""Inspect what the fp4 backend does to a model: rewritten/skipped layers, pass stages, saved bytes, an SVG.

python examples/inspect_model.py                 # prints the summary, writes fp4-inspect/
fp4 inspect examples/inspect_model.py            # the same through the CLI, for any script
"""

import torch
from fp4.inspect import inspect_model
from fp4.models import LlamaConfig, TinyLlama


def main(directory: str = "fp4-inspect") -> None:
    torch.manual_seed(0)
    model = TinyLlama(LlamaConfig(dim=64, n_layers=1, hidden_dim=128)).to(torch.bfloat16)
    tokens = torch.randint(0, 256, (2, 32))
    targets = torch.randint(0, 256, (2, 32))
    result = inspect_model(model, tokens, targets, inductor=False)
    print(result.summary())
    print(result.stage("quartet-linear").splitlines()[0], "...")  # each stage is a printed .fx graph
    files = result.write(directory)
    print(f"wrote {len(files)} files under {directory}/ (every stage, forward/backward graphs, one SVG per layer)")


if __name__ == "__main__":
    main()
