"""The Pulumi program for this repository: `pulumi up` applies stacks/<stack>.py through virtplan.

Which stack program runs, the backend (native dynamic providers or pulumi-libvirt), host
URI overrides and parallelism come from the `virtplan:*` config; see "Using with Pulumi" in README.md.
"""

from pathlib import Path

from virtplan.pulumi.program import run

registered = run(Path(__file__).resolve().parent)  # kept for tests and tools
