"""A plan as a Markdown document, ready to paste as a pull-request comment.

Rendered from the plan *document* (`virtplan.plan.planfile.plan_document`), in which secrets are
already masked, so nothing secret can reach it. Layout: the summary line and a table per
host, destructive changes highlighted in a caution block, the changes made outside
virtplan (drift), the dependency graph as Mermaid (forges draw it), then one collapsible
section per host with every change, its reason and its field diffs; optionally the
equivalent virsh commands.
"""

from __future__ import annotations

import html
from typing import Any

from virtplan.plan.changes import Action
from virtplan.views.text import move_lines

ACTION_WORDS = {
    "create": "create",
    "update": "update (live)",
    "restart": "update (restart)",
    "replace": "replace",
    "delete": "destroy",
    "migrate": "move (migrate)",
}
COLUMNS = [("create", "Add"), ("update", "Change live"), ("restart", "Restart"), ("replace", "Replace"),
           ("delete", "Destroy")]  # fmt: skip
MOVE_COLUMN = ("migrate", "Move")  # shown when the plan moves a VM
SENSITIVE = "(sensitive)"


def text(value: str) -> str:
    """User text made inert in Markdown and HTML (also safe in table cells)."""
    out = html.escape(value, quote=False)
    for ch in "\\`*_[]|~#":
        out = out.replace(ch, "\\" + ch)
    return out.replace("\n", "<br>")


def code(value: str) -> str:
    """An inline code span (safe in table cells)."""
    value = value.replace("\n", " ").replace("|", "\\|")
    fence = "``" if "`" in value else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def shown(field: str, value: Any) -> str:
    from virtplan.views.text import value as formatted

    if value == SENSITIVE:
        return SENSITIVE
    return formatted(field, value)


def _counts(changes: list[dict[str, Any]]) -> dict[str, int]:
    counts = {a.value: 0 for a in Action}
    for c in changes:
        counts[c["action"]] += 1
    return counts


def _summary(counts: dict[str, int]) -> str:
    return (
        f"Plan: {counts['create']} to add, {counts['update']} to change live, {counts['restart']} to restart, "
        f"{counts['replace']} to replace, {counts['delete']} to destroy"
        + (f", {counts['migrate']} to move." if counts.get("migrate") else ".")
    )


def _obj(change: dict[str, Any]) -> str:
    return f"{change['kind']} {code(change['key'])}"


def plan_markdown(doc: dict[str, Any], graph: str | None = None) -> str:
    """The Markdown document for a plan document; `graph` is Mermaid source to embed."""
    changes: list[dict[str, Any]] = doc["changes"]
    hosts: dict[str, str] = doc["hosts"]
    drift: list[dict[str, Any]] = doc.get("drift") or []
    columns = COLUMNS + ([MOVE_COLUMN] if any(c["action"] == "migrate" for c in changes) else [])
    lines = [f"### virtplan plan for stack {code(doc['stack'])}", ""]
    if doc.get("stack_file"):
        lines += [f"Stack file {code(doc['stack_file'])}, sha256 {code(doc['stack_hash'][:12])}.", ""]
    if not changes:
        lines += ["**No changes.** The hosts match the stack.", ""]
    else:
        lines += [f"**{_summary(_counts(changes))}**", ""]
        lines += ["| Host | " + " | ".join(title for _, title in columns) + " |",
                  "| --- | " + " | ".join("---:" for _ in columns) + " |"]  # fmt: skip
        for host in hosts:
            counts = _counts([c for c in changes if c["host"] == host])
            if any(counts.values()):
                lines.append(f"| {text(host)} | " + " | ".join(str(counts[a]) for a, _ in columns) + " |")
        lines.append("")
    risky = [c for c in changes if c.get("destructive")]
    if risky:
        plural = "s" if len(risky) > 1 else ""
        lines += ["> [!CAUTION]", f"> **{len(risky)} destructive change{plural}.** Applying this plan:"]
        for c in risky:
            lines.append(f"> - **{ACTION_WORDS[c['action']]}** {_obj(c)}{_on(c, hosts)}: {text(c['destructive'])}")
        lines.append("")
    if drift:
        lines += _drift_section(drift, hosts)
    if graph and changes:
        lines += ["<details>", "<summary>Dependency graph</summary>", "", "```mermaid", graph.rstrip(), "```", "",
                  "</details>", ""]  # fmt: skip
    for host, uri in hosts.items():
        mine = [c for c in changes if c["host"] == host]
        if not mine:
            continue
        counts = _counts(mine)
        brief = ", ".join(f"{counts[a]} {title.lower()}" for a, title in columns if counts[a])
        lines += ["<details open>", f"<summary><strong>Host {html.escape(host)}</strong> ({brief})</summary>", ""]
        lines += [f"URI {code(uri)}", ""]
        lines += ["| | Object | Action | Why |", "| :-: | --- | --- | --- |"]
        for c in mine:
            action = ACTION_WORDS[c["action"]]
            action = f"**{action}** ⚠️" if c.get("destructive") else action
            lines.append(f"| {code(c['symbol'])} | {_obj(c)} | {action} | {text(c['reason'])} |")
        lines.append("")
        for c in mine:
            lines += _change_detail(c)
        commands = [(c, c["commands"]) for c in mine if c.get("commands")]
        if commands:
            lines += _commands_section(commands, uri)
        lines += ["</details>", ""]
    return "\n".join(lines).rstrip() + "\n"


def _on(change: dict[str, Any], hosts: dict[str, str]) -> str:
    return f" on host {text(change['host'])}" if len(hosts) > 1 else ""


def _change_detail(c: dict[str, Any]) -> list[str]:
    fields = c.get("changes") or []
    title = f"**{code(c['symbol'])} {_obj(c)}**: {text(c['action'])}, {text(c['reason'])}"
    out = [title, ""]
    if c.get("destructive"):
        out += [f"⚠️ **Destructive:** {text(c['destructive'])}", ""]
    if c.get("placement") and c["action"] == "create":
        out += [f"Placement: {text(c['placement'])}", ""]
    if c.get("move"):
        out += [f"{text(line)}  " for line in move_lines(c["move"])] + [""]
    if c["action"] == "create":
        shown_fields = [f for f in fields if f["after"] is not None]
        if shown_fields:
            out += ["| Field | Value |", "| --- | --- |"]
            out += [f"| {text(f['field'])} | {text(shown(f['field'], f['after']))} |" for f in shown_fields]
            out.append("")
    elif fields:
        out += ["| Field | Before | After | Policy |", "| --- | --- | --- | --- |"]
        for f in fields:
            before, after = text(shown(f["field"], f["before"])), text(shown(f["field"], f["after"]))
            out.append(f"| {text(f['field'])} | {before} | {after} | {text(f['policy'])} |")
        out.append("")
    return out


def _drift_section(drift: list[dict[str, Any]], hosts: dict[str, str]) -> list[str]:
    out = ["#### Changes outside virtplan", "",
           "Made on the hosts since virtplan last applied this stack; the changes below undo them.", "",
           "| Object | Field | Last applied | Now |", "| --- | --- | --- | --- |"]  # fmt: skip
    for d in drift:
        name = f"{d['kind']} {code(d['key'])}{_on(d, hosts)}"
        if not d["fields"]:
            out.append(f"| {name} | | | **{text(d['status'])}** |")
        for f in d["fields"]:
            applied, now = text(shown(f["field"], f["applied"])), text(shown(f["field"], f["actual"]))
            out.append(f"| {name} | {text(f['field'])} | {applied} | {now} |")
    return [*out, ""]


def _commands_section(items: list[tuple[dict[str, Any], list[str]]], uri: str) -> list[str]:
    from virtplan.apply.steps.shell import q

    body = [f"export LIBVIRT_DEFAULT_URI={q(uri)}", ""]
    for change, commands in items:
        body.append(f"# {change['symbol']} {change['kind']} {change['key']}  ({change['action']}: {change['reason']})")
        body += commands
        body.append("")
    content = "\n".join(body).rstrip()
    fence = "```"
    while fence in content:
        fence += "`"
    return ["<details>", "<summary>Equivalent virsh commands</summary>", "", f"{fence}sh", content, fence, "",
            "</details>", ""]  # fmt: skip
