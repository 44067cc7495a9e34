"""Workflows built on the engine, one package or module each:

- `clone/`: a new environment from a deployed stack (options, design, disks, program);
- `importer/`: a stack program for what a host already has (read, choose, declare,
  check, program) and `adopt`, which takes ownership of it;
- `snapshots`: snapshots of a whole environment at once;
- `codegen`: the one code writer both clone and import write their programs with.
"""
