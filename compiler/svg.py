"""A picture of the rewritten part of a graph: networkx layered layout, written as SVG by hand.

:func:`rewritten_region` keeps the fp4 ops of a graph plus their direct
inputs and consumers (tuple ``getitem`` nodes folded into their producer),
as a small ``networkx.DiGraph`` that a report can hold after the FX graph is
gone.  :func:`render_svg` lays it out in layers (longest path from the
inputs, over ``networkx``'s topological order; each input sits just above its
first consumer) and draws boxes and arrows; no graphviz needed.
"""

from __future__ import annotations

import html
import operator

import networkx as nx
import torch.fx

BOX_WIDTH, BOX_HEIGHT, GAP_X, GAP_Y, MARGIN = 210, 44, 24, 46, 20
COLORS = {"fp4": "#fde2c4", "input": "#dbe9f6", "output": "#e3f1dc", "other": "#f2f2f2"}
BORDERS = {"fp4": "#c06a00", "input": "#3b6fa0", "output": "#4a8a35", "other": "#8a8a8a"}


def _short_target(node: torch.fx.Node) -> str:
    target = node.target
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    name = getattr(target, "__name__", str(target))
    if hasattr(target, "_schema"):
        name = target._schema.name.split("::")[-1]
    return name


def _type_text(node: torch.fx.Node) -> str:
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor):
        dims = ",".join(str(d) for d in value.shape)
        return f"{str(value.dtype).removeprefix('torch.')}[{dims}]"
    if isinstance(value, (tuple, list)):
        return f"({len(value)} tensors)"
    return ""


def _is_fp4(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and getattr(node.target, "namespace", None) == "fp4"


def _detail(node: torch.fx.Node) -> str:
    """The epilogue of a GEMM, e.g. ``bias+mask+rot->bf16``, to show what was fused."""
    from fp4.passes.epilogue import gemm_args, is_gemm

    if not is_gemm(node):
        return _type_text(node)
    args = gemm_args(node)
    parts = [name for name in ("bias", "gate", "residual", "clip_mask") if args.get(name) is not None]
    if args.get("inverse_rotate"):
        parts.append("rot^-1")
    if args["activation"] != "none":
        parts.append(args["activation"])
    epilogue = "+".join(parts) if parts else "plain"
    return f"{epilogue} -> {str(args['out_dtype']).removeprefix('torch.')}"


def rewritten_region(gm: torch.fx.GraphModule) -> nx.DiGraph:
    """fp4 ops, their inputs and their consumers, with ``getitem`` folded into the tuple-producing op."""

    def owner(node: torch.fx.Node) -> torch.fx.Node:
        return node.args[0] if node.op == "call_function" and node.target is operator.getitem else node

    region = nx.DiGraph()
    core = [n for n in gm.graph.nodes if _is_fp4(n)]
    keep: set[torch.fx.Node] = set(core)
    for node in core:
        keep.update(owner(arg) for arg in node.all_input_nodes)
        for user in node.users:
            targets = user.users if user.target is operator.getitem else [user]
            keep.update(t for t in targets if t.target is not operator.getitem)
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    for node in sorted(keep, key=order.get):
        kind = "fp4" if _is_fp4(node) else "input" if node.op == "placeholder" else "output"
        kind = kind if node.op in ("placeholder", "output") or _is_fp4(node) else "other"
        region.add_node(
            node.name,
            label=_short_target(node),
            detail=_detail(node),
            kind=kind,
            order=order[node],
            layer=node.meta.get("fp4_layer") if kind == "fp4" else None,
        )
    for node in keep:
        for arg in node.all_input_nodes:
            source = owner(arg)
            if source in keep and source is not node:
                region.add_edge(source.name, node.name)
    return region


def region_layers(region: nx.DiGraph) -> list[str]:
    """The linear layers whose rewrite the region shows, in graph order."""
    seen: dict[str, int] = {}
    for _, data in region.nodes(data=True):
        if data.get("layer") is not None:
            seen[data["layer"]] = min(seen.get(data["layer"], data["order"]), data["order"])
    return sorted(seen, key=seen.get)


def layer_region(region: nx.DiGraph, layer: str) -> nx.DiGraph:
    """The part of ``region`` that rewrites one linear layer: its fp4 ops and their direct neighbours."""
    core = {n for n, data in region.nodes(data=True) if data.get("layer") == layer}
    if not core:
        raise KeyError(f"no rewritten layer {layer!r}; layers: {region_layers(region)}")
    keep = set(core)
    for name in core:
        keep.update(region.predecessors(name))
        keep.update(region.successors(name))
    return region.subgraph(keep).copy()


def layers_of(region: nx.DiGraph) -> dict[str, int]:
    """Layer of each node: longest path from the sources; a source sits just above its first consumer."""
    depth: dict[str, int] = {}
    for name in nx.topological_sort(region):
        preds = list(region.predecessors(name))
        depth[name] = 1 + max((depth[p] for p in preds), default=-1)
    for name in region.nodes:
        if region.in_degree(name) == 0 and region.out_degree(name):
            depth[name] = min(depth[s] for s in region.successors(name)) - 1
    return depth


def layout(region: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Top-to-bottom layers, nodes ordered by graph order within a layer."""
    depth = layers_of(region)
    rows: dict[int, list[str]] = {}
    for name in sorted(region.nodes, key=lambda n: region.nodes[n]["order"]):
        rows.setdefault(depth[name], []).append(name)
    positions = {}
    for row, names in enumerate(rows[d] for d in sorted(rows)):
        for column, name in enumerate(names):
            positions[name] = (MARGIN + column * (BOX_WIDTH + GAP_X), MARGIN + 30 + row * (BOX_HEIGHT + GAP_Y))
    return positions


def render_svg(region: nx.DiGraph, title: str = "fp4 rewritten region", layer: str | None = None) -> str:
    """The region (or the part of it rewriting ``layer``) as a standalone SVG document."""
    if layer is not None:
        region = layer_region(region, layer)
        title = f"{title}: {layer}"
    positions = layout(region)
    width = max([x for x, _ in positions.values()] + [0]) + BOX_WIDTH + MARGIN
    height = max([y for _, y in positions.values()] + [0]) + BOX_HEIGHT + MARGIN
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">',
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>',
        f'<text x="{MARGIN}" y="{MARGIN + 10}" font-size="14">{html.escape(title)}</text>',
    ]
    for source, target in region.edges:
        (x1, y1), (x2, y2) = positions[source], positions[target]
        parts.append(
            f'<line x1="{x1 + BOX_WIDTH / 2}" y1="{y1 + BOX_HEIGHT}" x2="{x2 + BOX_WIDTH / 2}" y2="{y2}" '
            'stroke="#555" stroke-width="1" marker-end="url(#arrow)"/>'
        )
    for name, (x, y) in positions.items():
        data = region.nodes[name]
        kind = data["kind"]
        parts.append(
            f"<g><title>{html.escape(name)}</title>"
            f'<rect x="{x}" y="{y}" width="{BOX_WIDTH}" height="{BOX_HEIGHT}" rx="5" '
            f'fill="{COLORS[kind]}" stroke="{BORDERS[kind]}"/>'
            f'<text x="{x + 6}" y="{y + 17}" font-weight="bold">{html.escape(_clip(data["label"] + " " + name))}'
            f'</text><text x="{x + 6}" y="{y + 34}">{html.escape(_clip(data["detail"]))}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _clip(text: str, width: int = 32) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"
