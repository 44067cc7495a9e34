"""The engine scripts/pulumi-engine.sh built: the pinned version, current with tools/pulumi, offline-ready."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from engine_support import REPO, engine_version, offline


def test_the_cached_engine_is_the_pinned_version_and_current(pulumi_bin: Path) -> None:
    version = subprocess.run(offline([str(pulumi_bin / "pulumi"), "version"]), capture_output=True, text=True)
    assert version.stdout.strip() == engine_version() == "v3.274.1"  # the Automation API needs a real version
    check = subprocess.run(
        ["bash", str(REPO / "scripts" / "pulumi-engine.sh"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr  # nothing to rebuild for this checkout


def test_the_wrapper_module_pins_both_modules_and_the_replace(pulumi_bin: Path) -> None:
    go_mod = (REPO / "tools" / "pulumi" / "go.mod").read_text()
    versions = dict(re.findall(r"^\s*(github\.com/pulumi/pulumi/(?:pkg|sdk)/v3) (v\S+)", go_mod, re.M))
    assert versions == {"github.com/pulumi/pulumi/pkg/v3": "v3.274.1", "github.com/pulumi/pulumi/sdk/v3": "v3.274.1"}
    assert "replace github.com/atotto/clipboard => github.com/tgummerer/clipboard" in go_mod
    assert "tool github.com/pulumi/pulumi/pkg/v3/cmd/pulumi" in go_mod
    go_sum = (REPO / "tools" / "pulumi" / "go.sum").read_text()
    assert "github.com/pulumi/pulumi/pkg/v3 v3.274.1 h1:" in go_sum
