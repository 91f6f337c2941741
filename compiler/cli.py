"""The ``fp4`` command: ``fp4 train``, ``fp4 inspect``, ``fp4 bench``, ``fp4 study``, ``fp4 tune``.

::

    fp4 train                          # built-in TinyLlama on the built-in text: fp4 vs BF16 loss curves
    fp4 train --steps 60 --layers 4
    fp4 inspect                        # inspect one training step of the built-in model
    fp4 inspect my_script.py [args]    # run a script that uses torch.compile(backend="fp4"), report every graph
    fp4 inspect --dump-dir fp4-dump --svg graph.svg --stages -m my.module [args]   (options before the target)
    fp4 bench ...                      # kernel and layer benchmarks (fp4.bench)
    fp4 study --quick                  # held-out loss, bf16 vs fp4, on real text (fp4.study; docs/accuracy.md)
    fp4 study prepare --corpus python-docs --out corpus.fp4pack
    fp4 study --pack corpus.fp4pack --preset tiny --precisions bf16,fp4,fp4:quartet2 --out study-out
    fp4 tune export choices.json       # this machine's autotuning choices, for FP4_AUTOTUNE_CHOICES elsewhere
    fp4 tune merge out.json a.json b.json   # one table of several, the first that has a choice winning
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1 (``--steps 0`` trains nothing and has no curve to show)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _train(argv: list[str]) -> int:
    from .models import LlamaConfig, compare_with_bf16

    parser = argparse.ArgumentParser(prog="fp4 train", description="Train the built-in model with fp4 and BF16.")
    parser.add_argument("--steps", type=_positive, default=30)
    parser.add_argument("--batch", type=_positive, default=8)
    parser.add_argument("--seq", type=_positive, default=64)
    parser.add_argument("--layers", type=_positive, default=2)
    parser.add_argument("--dim", type=_positive, default=128)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--no-inductor", action="store_true", help="run the fp4 graphs without Inductor")
    args = parser.parse_args(argv)
    config = LlamaConfig(dim=args.dim, n_layers=args.layers, hidden_dim=2 * args.dim)
    options = {"inductor": False} if args.no_inductor else None
    compare_with_bf16(args.steps, args.batch, args.seq, config, args.device, fp4_options=options)
    return 0


def _builtin_step() -> None:
    """One training step of a small built-in model with the fp4 backend (what ``fp4 inspect`` shows by default)."""
    import torch

    from .models import LlamaConfig, TinyLlama, batches, corpus_tokens

    torch.manual_seed(0)
    model = TinyLlama(LlamaConfig(dim=64, n_layers=1, hidden_dim=128)).to(torch.bfloat16)
    inputs, targets = next(batches(corpus_tokens(), 2, 32, torch.Generator().manual_seed(0)))
    torch.compile(model, backend="fp4")(inputs, targets).backward()


def _inspect(argv: list[str]) -> int:
    from . import report
    from .backend import override_options
    from .inspect import Inspection, ScriptNotFoundError, inspect_script

    parser = argparse.ArgumentParser(
        prog="fp4 inspect", description="Show what the fp4 backend rewrote in every graph a script compiles."
    )
    parser.add_argument("target", nargs="?", help="script path (default: one step of the built-in model)")
    parser.add_argument("-m", "--module", action="store_true", help="TARGET is a module name (as python -m)")
    parser.add_argument("--dump-dir", help="write every stage, the partitioned graphs and an SVG per graph here")
    parser.add_argument("--svg", help="write the SVG of the first training graph to this file")
    parser.add_argument("--stages", action="store_true", help="print the graph before and after every pass")
    parser.add_argument("--no-inductor", action="store_true", help="compile without Inductor (plain FX graphs)")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    args = parser.parse_args(argv)
    options = {}
    if args.dump_dir:
        options["dump_dir"] = args.dump_dir
    if args.no_inductor:
        options["inductor"] = False
    if args.target is None:
        with override_options(**options), report.collect() as reports:
            _builtin_step()
        result = Inspection(reports)
    else:
        target = args.target
        if args.module and target.endswith(".py"):
            parser.error("-m takes a module name, not a .py path")
        try:
            result = inspect_script(target, args.script_args, **options)
        except ScriptNotFoundError as error:
            print(f"fp4 inspect: error: {error}", file=sys.stderr)
            return 2
        except ValueError as error:  # the script compiled nothing
            if error.__cause__ is not None:
                traceback.print_exception(error.__cause__)
            print(f"fp4 inspect: {error}", file=sys.stderr)
            return 1
    print(result.summary())
    if args.stages:
        for r in result.reports:
            for _, text in r.stages:
                print(text)
            for text in (r.forward_graph, r.backward_graph):
                if text:
                    print(text)
    if args.svg:
        print(f"wrote {result.write_svg(args.svg)}")
    if args.dump_dir:
        print(f"wrote every stage under {args.dump_dir}")
    if result.error is not None:
        # The reports above are the graphs compiled before the script failed.
        sys.stdout.flush()
        traceback.print_exception(result.error)
        print(f"fp4 inspect: {args.target} raised {type(result.error).__name__}: {result.error}", file=sys.stderr)
    return result.exit_code


def _bench(argv: list[str]) -> int:
    bench = importlib.import_module("fp4.bench")
    return bench.main(argv) or 0


def _study(argv: list[str]) -> int:
    from . import study

    return study.main(argv)


def _tune(argv: list[str]) -> int:
    from fp4.runtime import autotune
    from fp4.runtime.cache import KernelCache

    parser = argparse.ArgumentParser(
        prog="fp4 tune",
        description="Export the autotuner's choices of this machine's kernel cache, so that other machines with "
        f"the same GPU take them ({autotune.CHOICES_ENV}=FILE) instead of timing candidates in their first step.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write every stored choice to one table")
    export.add_argument("out", help="the table to write (JSON)")
    export.add_argument("--cache-dir", help="the kernel cache to read (default: $FP4_CACHE_DIR or ~/.cache/fp4)")
    merge = commands.add_parser("merge", help="join choice tables into one, the first that has a choice winning")
    merge.add_argument("out", help="the table to write (JSON; may be one of the inputs)")
    merge.add_argument("tables", nargs="+", help="the tables to join, in order of precedence")
    args = parser.parse_args(argv)
    if args.command == "merge":
        count = autotune.merge_choices(args.out, args.tables)
        print(f"wrote {count} choices to {args.out}")
        return 0
    count = autotune.export_choices(args.out, KernelCache(args.cache_dir) if args.cache_dir else None)
    if not count:
        print(f"fp4 tune: no autotuning choices stored in the kernel cache; {args.out} holds none", file=sys.stderr)
        return 1
    print(f"wrote {count} choices to {args.out}; use them with {autotune.CHOICES_ENV}={args.out}")
    return 0


COMMANDS = {"train": _train, "inspect": _inspect, "bench": _bench, "study": _study, "tune": _tune}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nfp4: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
