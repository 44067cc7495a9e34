"""The example pipeline (examples/ci): the commands it runs, against a private host, from a
checkout-like folder; and the workflow files call exactly those commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from review_support import REPO, Cli, edit

SCRIPT = REPO / "examples" / "ci" / "virtplan-ci.sh"
STACK = """\
from virtplan import NIC, VM, Host, Network, Pool, Volume

Host("local", domain_type="qemu")
net = Network("ci-net", cidr="10.95.0.0/24")
pool = Pool("ci-pool", path="/var/lib/libvirt/images/ci")
VM("ci-1", memory="64MiB", disks=[Volume("ci-1.qcow2", pool=pool, size="16MiB")], nics=[NIC(net)], shutdown_timeout=1)
"""


@pytest.fixture(scope="module")
def repo(private_host, tmp_path_factory):
    root = tmp_path_factory.mktemp("checkout")
    (root / "stacks").mkdir()
    (root / "stacks" / "ci.py").write_text(STACK)
    (root / "examples").mkdir()
    shutil.copytree(REPO / "examples" / "ci", root / "examples" / "ci")
    cli = Cli(private_host.uri, root / "state", cwd=root)
    cli.env["VIRTPLAN"] = f"{sys.executable} -m virtplan.cli"
    yield root, cli


def pipeline(root, cli, *args: str, rc: int) -> str:
    proc = subprocess.run(["bash", "examples/ci/virtplan-ci.sh", *args], cwd=root, env=cli.env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == rc, f"virtplan-ci.sh {' '.join(args)} exited {proc.returncode}, expected {rc}:\n{out}"
    return out


def summary(root) -> dict[str, str]:
    return dict(line.split("=") for line in (root / "out" / "summary.env").read_text().split())


def test_pipeline_plans_then_applies_the_reviewed_plan(repo):
    root, cli = repo
    out = pipeline(root, cli, "plan", "out", "stacks/ci.py", rc=2)
    assert "### virtplan plan for stack `ci`" in out and "```mermaid" in out
    assert summary(root) == {"CHANGES": "1", "DESTRUCTIVE": "0"}
    doc = json.loads((root / "out" / "ci.plan.json").read_text())
    assert doc["stack_file"] == "stacks/ci.py" and len(doc["changes"]) == 4
    assert "Apply complete: 4 change(s) applied." in pipeline(root, cli, "apply", "out", rc=0)
    pipeline(root, cli, "plan", "out", "stacks/ci.py", rc=0)
    assert summary(root) == {"CHANGES": "0", "DESTRUCTIVE": "0"}
    assert "**No changes.**" in (root / "out" / "plan.md").read_text()
    pipeline(root, cli, "apply", "out", rc=0)  # an empty plan applies as a no-op

    # Destructive: the check says so; the merge applies it only with --allow-destroy.
    edit(root / "stacks" / "ci.py", 'VM("ci-1"', 'VM("ci-2"')
    out = pipeline(root, cli, "plan", "out", "stacks/ci.py", rc=2)
    assert summary(root)["DESTRUCTIVE"] == "1" and "[!CAUTION]" in out
    assert "--allow-destroy" in pipeline(root, cli, "apply", "out", rc=1)
    pipeline(root, cli, "apply", "out", "--allow-destroy", rc=0)

    # Stale: the stack changed after review.
    edit(root / "stacks" / "ci.py", 'memory="64MiB"', 'memory="80MiB"')
    pipeline(root, cli, "plan", "out", "stacks/ci.py", rc=2)
    edit(root / "stacks" / "ci.py", 'memory="80MiB"', 'memory="96MiB"')
    out = pipeline(root, cli, "apply", "out", rc=1)
    assert "stale plan: the stack file stacks/ci.py changed after this plan was made; run plan again" in out

    # A broken stack: exit 1, and the error is in the comment.
    (root / "stacks" / "broken.py").write_text("from virtplan import VM\nVM('x', memory='lots')\n")
    pipeline(root, cli, "plan", "out", "stacks/ci.py", "stacks/broken.py", rc=1)
    comment = (root / "out" / "plan.md").read_text()
    assert "virtplan plan for `stacks/broken.py` failed" in comment and "memory" in comment
    assert not (root / "out" / "broken.plan.json").exists()


def test_workflows_run_these_commands():
    github = yaml.safe_load((REPO / "examples" / "ci" / "github-actions.yml").read_text())
    steps = {job: "\n".join(s.get("run", "") for s in spec["steps"]) for job, spec in github["jobs"].items()}
    assert "examples/ci/virtplan-ci.sh plan out stacks/*.py" in steps["plan"]
    assert "gh pr comment" in steps["plan"] and "out/plan.md" in steps["plan"]
    assert 'examples/ci/virtplan-ci.sh apply "$PLANS"' in steps["apply"] and "gh run download" in steps["apply"]
    assert github["jobs"]["apply"]["concurrency"] == "virtplan-apply"
    # any runner: nothing but the plan artifact travels between the jobs
    assert all(spec["runs-on"] == "ubuntu-latest" for spec in github["jobs"].values())
    assert "VIRTPLAN_STATE_DIR" not in (REPO / "examples" / "ci" / "github-actions.yml").read_text()
    gitlab = yaml.safe_load((REPO / "examples" / "ci" / "gitlab-ci.yml").read_text())
    assert any("virtplan-ci.sh plan out stacks/*.py" in line for line in gitlab["virtplan-plan"]["script"])
    assert any("virtplan-ci.sh apply reviewed/out" in str(line) for line in gitlab["virtplan-apply"]["script"])
    assert any("jobs/artifacts" in str(line) for line in gitlab["virtplan-apply"]["script"])
    assert "tags" not in gitlab["virtplan-plan"] and "VIRTPLAN_STATE_DIR" not in str(gitlab)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
