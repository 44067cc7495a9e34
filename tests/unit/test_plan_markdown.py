"""The Markdown plan (a pull-request comment): golden files, no secrets, user text inert."""

from __future__ import annotations

from pathlib import Path

import pytest
from plan_review_fixtures import PASSWORD, VNC_PASSWORD, fixed, scenario

from virtplan.model.secrets import Secret
from virtplan.plan.drift import detect
from virtplan.plan.planfile import plan_document
from virtplan.views.graph import mermaid, stack_graph
from virtplan.views.markdown import code, plan_markdown, text
from virtplan.views.virsh import plan_commands

GOLDEN = Path(__file__).parent / "golden" / "markdown"


def document(tmp_path: Path, kind: str, commands: bool = False) -> str:
    stack, plan, observed, store, renderer = scenario(tmp_path, kind)
    drift = detect(stack, observed, store, renderer).to_list()
    cmds = plan_commands(plan, stack, renderer, observed, store) if commands else None
    doc = fixed(plan_document(plan, stack, observed, store, drift=drift, commands=cmds))
    return plan_markdown(doc, mermaid(stack_graph(stack, plan)))


@pytest.mark.parametrize("kind", ["create", "change", "none"])
def test_golden(tmp_path, kind, update_golden):
    out = document(tmp_path, kind)
    golden = GOLDEN / f"{kind}.md"
    if update_golden or not golden.exists():
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(out)
    assert out == golden.read_text(), f"{golden} differs (VIRTPLAN_UPDATE_GOLDEN=1 rewrites it)"


def test_reviewer_sees_what_matters(tmp_path):
    out = document(tmp_path, "change", commands=True)
    assert "**Plan: 1 to add, 3 to change live, 1 to restart, 2 to replace, 2 to destroy.**" in out
    caution = out[out.index("> [!CAUTION]") :].split("\n\n")[0]
    assert "> **3 destructive changes.**" in caution
    assert "> - **destroy** vm `old`: the running VM is stopped and undefined" in caution
    assert "> - **replace** volume `lab-pool/scratch`: the volume and all data on it are deleted" in caution
    assert "#### Changes outside virtplan" in out and "| vm `web1` | memory | 512 MiB | 384 MiB |" in out
    assert out.index("Changes outside virtplan") < out.index("<summary><strong>Host kvm1")
    assert "```mermaid\nflowchart LR" in out and "class n" in out
    assert "<summary>Equivalent virsh commands</summary>" in out and "virsh setmem web1" in out
    assert "| `-/+` | network `back-net` | replace | cidr, gateway changed" in out


def test_no_secrets(tmp_path):
    out = document(tmp_path, "create", commands=True)
    for secret in (PASSWORD, VNC_PASSWORD):
        digest = Secret(secret).digest()
        for form in (secret, digest, digest[:16]):
            assert form not in out
    assert "(sensitive)" in out


def test_user_text_is_inert():
    assert text("a|b <script> *x* [l](u) `c`") == "a\\|b &lt;script&gt; \\*x\\* \\[l\\](u) \\`c\\`"
    assert code("back|net") == "`back\\|net`"
    assert code("a`b") == "`` a`b ``"
