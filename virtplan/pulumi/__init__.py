"""virtplan as a Pulumi program: dynamic providers over the engine, and a pulumi-libvirt emitter.

- `virtplan.pulumi.program.run` is what the repository's `__main__.py` calls: it loads the
  stack program for the current Pulumi stack and registers every declared resource.
- `virtplan.pulumi.deploy` (from `virtplan.pulumi.inline`) does the same for resources declared
  inline in your own Pulumi project's `__main__.py`.
- `virtplan.pulumi.text` (from `virtplan.pulumi.outputs`) lets a Pulumi Output (a secret config
  value, another resource's output) stand in a stack's text fields, such as cloud-init's.
- `virtplan.pulumi.provider` holds the native backend: one dynamic resource type per
  virtplan kind, whose provider plans and applies exactly one resource with the engine.
- `virtplan.pulumi.bridged` emits the same stack as `pulumi_libvirt` resources.

Importing this package imports neither `pulumi` nor `libvirt`; `deploy` and `text` import
`pulumi` when first used.
"""

from typing import Any

__all__ = ["deploy", "text"]


def __getattr__(name: str) -> Any:
    if name == "deploy":
        from virtplan.pulumi.inline import deploy

        return deploy
    if name == "text":
        from virtplan.pulumi.outputs import text

        return text
    raise AttributeError(f"module 'virtplan.pulumi' has no attribute {name!r}")
