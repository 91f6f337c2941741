"""Where a compiled Llama with ``launch="inductor"`` leaves the plan path's bits (needs a GPU).

Trains the GPU tests' 2-layer Llama for ``--steps`` AdamW steps under ``backend="fp4"`` as their Inductor-launch
test does (``tests/gpu/gpu_common.py``: the same weights, batch and ``torch.manual_seed`` every run):

* ``plan`` twice (is the plan path itself repeatable?);
* ``inductor`` with no op decomposed (the option's other effects alone);
* ``inductor`` with every op that has a twin; where that run differs, with one op's twin at a time (each op the
  model launched from Inductor's code).

Per run: the losses, the first parameter whose step-0 gradient differs from the first plan run's (and by how
much), and the op calls launched from Inductor's code.  Prints a table and writes ``--out`` (JSON).

    python benchmarks/launch_llama_check.py --out launch_llama.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "0")  # before any compile starts Inductor's workers
for cache in ("TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):  # each variant compiles afresh
    os.environ.setdefault(cache, "0")

import torch  # noqa: E402
from fp4.runtime import inductor_launch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "gpu"))
from gpu_common import tiny_llama, train_steps  # noqa: E402


def _all_gradients(model) -> dict:
    return {name: p.grad for name, p in model.named_parameters()}


def first_difference(grads, reference):
    for name, want in reference.items():
        got = grads[name]
        if not torch.equal(got, want):
            diff = (got.float() - want.float()).abs()
            return {"parameter": name, "max_abs": diff.max().item(), "elements": int((diff > 0).sum())}
    return None


def run(name, base, twins, subset, steps) -> tuple[dict, tuple | None]:
    """One variant (``subset``: the twins ``decompose`` may use; None: ``launch="plan"``): its record and its
    ``(losses, step-0 gradients)``, None where it failed."""
    inductor_launch.TWINS.clear()
    inductor_launch.TWINS.update(twins if subset is None else subset)
    options = {"launch": "plan" if subset is None else "inductor"}
    before = dict(inductor_launch.COUNTERS)
    try:
        losses, grads = train_steps(copy.deepcopy(base), options, steps, gradients=_all_gradients)
    except Exception as error:  # a failing variant is a finding, not the end of the check
        print(f"{name:48s} failed: {error}", flush=True)
        return {"run": name, "error": f"{type(error).__name__}: {error}"[:500]}, None
    finally:
        inductor_launch.TWINS.clear()
        inductor_launch.TWINS.update(twins)
    counters = {k: v - before.get(k, 0) for k, v in inductor_launch.COUNTERS.items() if v != before.get(k, 0)}
    losses = [loss.item() for loss in losses]
    return {"run": name, "losses": losses, "counters": counters}, (losses, grads[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    base = tiny_llama()
    twins = dict(inductor_launch.TWINS)
    runs = [("plan", None), ("plan again", None), ("inductor, no twin", {}), ("inductor, every twin", twins)]
    records, reference = [], None
    while runs:
        name, subset = runs.pop(0)
        record, outcome = run(name, base, twins, subset, args.steps)
        records.append(record)
        if outcome is None:
            continue
        reference = reference or outcome  # the first plan run's
        record["losses_equal"] = outcome[0] == reference[0]
        record["gradient_difference"] = first_difference(outcome[1], reference[1])
        print(f"{name:48s} losses {outcome[0]} equal={record['losses_equal']} "
              f"grad diff={record['gradient_difference']}", flush=True)  # fmt: skip
        same = record["losses_equal"] and record["gradient_difference"] is None
        if name == "inductor, every twin" and not same:
            # bisect: one op's twin at a time, for the ops this model launched from Inductor's code
            used = {key.partition(".")[2] for key in record["counters"] if key.startswith("inductor.")}
            runs += [(f"inductor, {op._schema.name} only", {op: t}) for op, t in twins.items()
                     if op._schema.name.partition("::")[2] in used]  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"card": torch.cuda.get_device_name(), "runs": records}, indent=1))


if __name__ == "__main__":
    main()
