"""virtplan as a Pulumi program: dynamic providers over the engine, and a pulumi-libvirt emitter.

- `virtplan.pulumi.program.run` is what the repository's `__main__.py` calls: it loads the
  stack program for the current Pulumi stack and registers every declared resource.
- `virtplan.pulumi.provider` holds the native backend: one dynamic resource type per
  virtplan kind, whose provider plans and applies exactly one resource with the engine.
- `virtplan.pulumi.bridged` emits the same stack as `pulumi_libvirt` resources.

Importing this package imports neither `pulumi` nor `libvirt`.
"""
