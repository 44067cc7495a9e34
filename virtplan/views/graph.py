"""The dependency graph of a stack, as Mermaid or Graphviz DOT.

Nodes are the stack's networks, pools, volumes and VMs, grouped by host; an arrow goes
from what is needed to what needs it (a network to the VMs on it, a pool to its volumes,
a backing volume to its overlays), which is also the order apply creates them in. With a
plan, each node shows its planned action, and objects the plan deletes (no longer in the
stack) are added.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from virtplan.model import Stack
from virtplan.plan.changes import SYMBOLS, Action, Plan
from virtplan.plan.planner import ordered

COLORS = {  # fill, stroke
    "create": ("#dafbe1", "#1a7f37"),
    "update": ("#fff8c5", "#9a6700"),
    "restart": ("#ffe7c2", "#bc4c00"),
    "replace": ("#fbefff", "#8250df"),
    "delete": ("#ffebe9", "#cf222e"),
    "migrate": ("#ddf4ff", "#0969da"),
}


@dataclass
class Node:
    address: str
    host: str
    kind: str
    key: str
    action: str | None = None
    destructive: bool = False

    @property
    def label(self) -> str:
        prefix = f"{SYMBOLS[Action(self.action)]} " if self.action else ""
        return f"{prefix}{self.kind} {self.key}"


@dataclass
class Graph:
    stack: str
    hosts: list[str]
    nodes: list[Node] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)  # (needed, needing) addresses

    def ids(self) -> dict[str, str]:
        return {n.address: f"n{i}" for i, n in enumerate(self.nodes)}


def stack_graph(stack: Stack, plan: Plan | None = None) -> Graph:
    """The graph of `stack`, with `plan`'s actions when given."""
    resources = ordered(stack.managed())
    graph = Graph(stack.name, [h.name for h in stack.hosts])
    changes = {c.address: c for c in plan.changes} if plan is not None else {}
    for r in resources:
        assert r.host is not None
        change = changes.get(r.address)
        action = change.action.value if change else None
        graph.nodes.append(Node(r.address, r.host.name, r.kind, r.key, action, bool(change and change.destructive)))
    known = {n.address for n in graph.nodes}
    for change in changes.values():
        if change.address not in known:
            graph.nodes.append(Node(change.address, change.host, change.kind, change.key, change.action.value,
                                    bool(change.destructive)))  # fmt: skip
            known.add(change.address)
    edges = set()
    for r in resources:
        for dep in r.dependencies():
            if dep.address in known:
                edges.add((dep.address, r.address))
    for change in changes.values():
        if change.action == Action.DELETE:
            for user in change.depends_on:  # deleted after its users go
                if user in known:
                    edges.add((change.address, user))
    order = {n.address: i for i, n in enumerate(graph.nodes)}
    graph.edges = sorted(edges, key=lambda e: (order[e[0]], order[e[1]]))
    return graph


# -- Mermaid ----------------------------------------------------------------------------
def _mermaid_text(text: str) -> str:
    out = text
    for char, entity in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        out = out.replace(char, entity)
    return out


_MERMAID_SHAPES = {"network": ('{{"', '"}}'), "pool": ('[("', '")]'), "volume": ('[/"', '"/]'), "vm": ('["', '"]')}
_MERMAID_SHAPES["snapshot"] = ('(["', '"])')  # virtplan.Snapshot


def mermaid(graph: Graph) -> str:
    """A Mermaid flowchart (forges render it in Markdown as a picture)."""
    ids = graph.ids()
    lines = ["flowchart LR"]
    for h, host in enumerate(graph.hosts):
        members = [n for n in graph.nodes if n.host == host]
        if not members:
            continue
        lines.append(f'  subgraph h{h}["host {_mermaid_text(host)}"]')
        for n in members:
            left, right = _MERMAID_SHAPES[n.kind]
            lines.append(f"    {ids[n.address]}{left}{_mermaid_text(n.label)}{right}")
        lines.append("  end")
    for a, b in graph.edges:
        lines.append(f"  {ids[a]} --> {ids[b]}")
    used = sorted({n.action for n in graph.nodes if n.action})
    for action in used:
        fill, stroke = COLORS[action]
        dash = ",stroke-dasharray:4 3" if action == "delete" else ""
        lines.append(f"  classDef {action} fill:{fill},stroke:{stroke},color:#1f2328{dash}")
    if any(n.destructive for n in graph.nodes):
        lines.append("  classDef destructive stroke-width:3px")
    for action in used:
        of_action = ",".join(ids[n.address] for n in graph.nodes if n.action == action)
        lines.append(f"  class {of_action} {action}")
    risky = ",".join(ids[n.address] for n in graph.nodes if n.destructive)
    if risky:
        lines.append(f"  class {risky} destructive")
    return "\n".join(lines) + "\n"


# -- DOT --------------------------------------------------------------------------------
def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_DOT_SHAPES = {"network": "hexagon", "pool": "cylinder", "volume": "note", "vm": "box"}
_DOT_SHAPES["snapshot"] = "ellipse"  # virtplan.Snapshot


def dot(graph: Graph) -> str:
    """A Graphviz digraph (`dot -Tsvg`), one cluster per host."""
    lines = [
        f"digraph {_dot_text('virtplan ' + graph.stack)} {{",
        "  rankdir=LR;",
        '  node [fontname="Helvetica", style="rounded,filled", fillcolor="white"];',
    ]
    for h, host in enumerate(graph.hosts):
        members = [n for n in graph.nodes if n.host == host]
        if not members:
            continue
        lines.append(f"  subgraph cluster_{h} {{")
        lines.append(f"    label={_dot_text('host ' + host)};")
        for n in members:
            attrs = [f"label={_dot_text(n.label)}", f"shape={_DOT_SHAPES[n.kind]}"]
            if n.action:
                fill, stroke = COLORS[n.action]
                attrs += [f'fillcolor="{fill}"', f'color="{stroke}"']
                if n.action == "delete":
                    attrs.append('style="rounded,filled,dashed"')
            if n.destructive:
                attrs.append("penwidth=3")
            lines.append(f"    {_dot_text(n.address)} [{', '.join(attrs)}];")
        lines.append("  }")
    for a, b in graph.edges:
        lines.append(f"  {_dot_text(a)} -> {_dot_text(b)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
