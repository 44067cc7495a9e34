"""The real Pulumi engine for tests (built by scripts/pulumi-engine.sh); this module holds no tests.

Every `pulumi` command runs offline, as CI must:
- in a network namespace of its own with only loopback up (`unshare --net`), so any attempt
  to reach the internet fails instead of silently succeeding; libvirt's unix sockets and the
  engine's own loopback gRPC still work;
- with a local file backend, the passphrase secrets provider, a private PULUMI_HOME, update
  checks and automatic plugin downloads off.

`Project` copies the repository's Pulumi project into a scratch folder with `.venv` pointing at
the virtualenv running the tests, so Pulumi may write its stack files (`stacks/Pulumi.<stack>.yaml`)
without touching the checkout; or starts from an empty folder for `pulumi new`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
GO_MOD = REPO / "tools" / "pulumi" / "go.mod"
TOOLS = ("pulumi", "pulumi-language-python", "pulumi-language-python-exec", "pulumi-resource-pulumi-python")
#: Each command gets this long; a cold preview of the demo takes seconds, a boot-and-wait minutes.
TIMEOUT = 900


def engine_version() -> str:
    """The Pulumi version tools/pulumi/go.mod pins (what scripts/pulumi-engine.sh builds)."""
    found = re.search(r"^\s*github\.com/pulumi/pulumi/pkg/v3 (v\S+)", GO_MOD.read_text(), re.M)
    assert found, f"no pkg/v3 requirement in {GO_MOD}"
    return found.group(1)


def engine_bin() -> Path:
    """Where scripts/pulumi-engine.sh puts the engine."""
    root = Path(os.environ.get("VIRTPLAN_TOOLS_CACHE", "/var/cache/virtplan/tools"))
    return root / f"pulumi-{engine_version()}" / "bin"


def missing_engine() -> str | None:
    """Why the engine cannot run here (None: it can)."""
    folder = engine_bin()
    absent = [t for t in TOOLS if not os.access(folder / t, os.X_OK)]
    if absent:
        return f"{', '.join(absent)} missing in {folder}: run `bash scripts/pulumi-engine.sh` (scripts/test.sh does)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare and ip are needed to run pulumi without a network"
    return None


def offline(argv: list[str]) -> list[str]:
    """`argv` run in a fresh network namespace with only loopback up."""
    return ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "offline", *argv]


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


class CommandFailed(AssertionError):
    pass


class Project:
    """A Pulumi project folder and the offline `pulumi` CLI that drives it."""

    def __init__(self, root: Path, work: Path, passphrase: str, source: Path | None = REPO) -> None:
        self.root = root
        self.home = work / "pulumi-home"
        self.backend = work / "backend"
        self.passphrase = passphrase
        self.outputs: list[str] = []  # everything any command printed, for secret checks
        self.home.mkdir(parents=True, exist_ok=True)
        self.backend.mkdir(parents=True, exist_ok=True)
        if source is None:  # an empty folder, e.g. for `pulumi new`
            self.root.mkdir(parents=True)
            return
        self.root.mkdir(parents=True)
        for name in ("Pulumi.yaml", "__main__.py"):
            shutil.copy2(source / name, root / name)
        shutil.copytree(
            source / "stacks", root / "stacks", ignore=shutil.ignore_patterns(".virtplan", "__pycache__", "images")
        )
        self.use_venv(".venv")

    def use_venv(self, name: str) -> None:
        """The project's virtualenv folder (Pulumi.yaml's `virtualenv`) is the one running the tests."""
        (self.root / name).symlink_to(Path(sys.prefix))

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "VIRTPLAN_URI"))}
        env.update(
            PATH=f"{engine_bin()}:{os.environ['PATH']}",
            PULUMI_HOME=str(self.home),
            PULUMI_BACKEND_URL=f"file://{self.backend}",
            PULUMI_CONFIG_PASSPHRASE=self.passphrase,
            PULUMI_SKIP_UPDATE_CHECK="true",
            PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="true",
            PULUMI_SKIP_CONFIRMATIONS="true",
            NO_COLOR="1",
            COLUMNS="200",
        )
        return env

    def run(self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = TIMEOUT) -> Result:
        """`pulumi ARGS --non-interactive --color never` in the project folder, offline."""
        argv = [str(engine_bin() / "pulumi"), *args, "--non-interactive", "--color", "never"]
        done = subprocess.run(
            offline(argv), cwd=self.root, env=self.env, input=stdin, capture_output=True, text=True, timeout=timeout
        )
        result = Result(list(args), done.returncode, done.stdout, done.stderr)
        self.outputs.append(result.text)
        if check and done.returncode != 0:
            raise CommandFailed(f"pulumi {' '.join(args)} exited {done.returncode}:\n{result.text}")
        return result

    def state_file(self, stack: str) -> Path:
        """The file backend's checkpoint of `stack`."""
        found = sorted(self.backend.rglob(f"{stack}.json"))
        found = [p for p in found if ".history" not in p.parts and "backups" not in p.parts]
        assert len(found) == 1, f"state files for {stack}: {found}"
        return found[0]


def summary(text: str) -> dict[str, int]:
    """The counts in Pulumi's "Resources:" summary: {'create': 3, 'unchanged': 1, ...}."""
    counts: dict[str, int] = {}
    section = text.rsplit("Resources:", 1)[-1]  # `up` prints its preview's summary first
    # one count per line ("    ~ 2 to update"), except that Pulumi ends with "3 changes. 6 unchanged"
    for n, what in re.findall(r"^\s+(?:[+~\-]+ |\+-|\d+ changes?\. )?\s*(\d+) (to create|created|to update|updated|to delete|"
                              r"deleted|to replace|replaced|unchanged|to refresh|refreshed)", section, re.M):  # fmt: skip
        key = what.removeprefix("to ").replace("created", "create").replace("updated", "update")
        key = key.replace("deleted", "delete").replace("replaced", "replace").replace("refreshed", "refresh")
        counts[key] = counts.get(key, 0) + int(n)
    return counts
