"""Clone a deployed environment: `virtplan clone STACK --name N`.

The clone is an ordinary stack, written as a readable program (`stacks/<N>.py`) and then
applied, so plan, apply, drift, destroy and Pulumi work on it as on any stack:

- every VM gets a new name (`<N>-<vm>`), a new UUID (libvirt's) and new MACs (derived
  from the clone's name; MACs the source pins are dropped);
- networks are recreated under new names as *isolated* networks with mapped subnets
  (`--subnet-map`, else a free subnet is picked where the old one would clash); fixed IPs,
  gateways and DHCP ranges keep their place in the subnet; host bridges are replaced by
  an isolated network unless `--connected` keeps forward modes and bridges;
- disks are *linked clones*: the source VM's disks are frozen (`virtplan.apply.layers`: the
  source keeps running on new layers, its frozen files are never written again) and each
  clone disk is a qcow2 overlay on a frozen file. Time does not depend on disk size.
  `--full` makes full copies instead (libvirt copies on the host); VMs moved to another
  host (`--host-map`) always get full copies, streamed through this machine;
- cloud-init identity (hostname, instance-id) is regenerated; the rest of the seed is
  the source's, read from the source program (`source_stack`), so secrets stay there;
- `--from-snapshot NAME` starts from a disk-only snapshot instead of the current state.

The frozen source files belong to the source stack, which refuses to delete them while a
clone backs onto them (`virtplan.plan.protection`).

The package, in the order a clone is made: `options` (the request and its checks),
`design` and `subnets` (the clone's shape, pure), `disks` (freezing and copying on the
hosts), `program` (the clone's stack file, written by `virtplan.workflows.codegen`),
`source` (what a clone's program reads from the source program when it runs). This
module runs them: `clone` under the source stack's lock, then `apply_clone`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from virtplan.errors import VirtplanError
from virtplan.workflows.clone.design import Design, design_clone
from virtplan.workflows.clone.disks import Progress, fill_disks, frozen_states
from virtplan.workflows.clone.options import CloneError, CloneOptions, CloneResult
from virtplan.workflows.clone.program import clone_program
from virtplan.workflows.clone.source import SourceStack, source_stack

if TYPE_CHECKING:
    from virtplan.engine import Engine, Observation
    from virtplan.model import Stack

__all__ = [
    "CloneError", "CloneOptions", "CloneResult", "SourceStack", "apply_clone", "clone", "clone_program",
    "deployed_check", "design_clone", "source_stack",
]  # fmt: skip


def deployed_check(engine: Engine, observation: Observation) -> None:
    """CloneError unless every VM of the source stack exists on its host and is the stack's own."""
    from virtplan.plan.ownership import owner_stack

    missing = []
    for vm in engine.stack.vms:
        assert vm.host is not None
        host = observation.hosts[vm.host.name]
        obj = host.get("vm", vm.name)
        if obj is None or owner_stack(obj, vm.address, host.uri, engine.store, engine.stack.key) != engine.stack.key:
            missing.append(vm.address)
    if missing:
        raise CloneError(f"stack {engine.stack.name!r} is not deployed ({', '.join(missing)} missing or not its "
                         "own); run `virtplan apply` on it first")  # fmt: skip
    if not engine.stack.vms:
        raise CloneError(f"stack {engine.stack.name!r} declares no VMs; there is nothing to clone")


def clone(
    source: str | os.PathLike[str],
    opts: CloneOptions,
    host_uris: dict[str, str] | None = None,
    apply: bool = True,
    say: Progress | None = None,
) -> CloneResult:
    """Clone the deployed stack at `source`; write the clone's program and apply it."""
    from virtplan.apply.layers import compact_host, release_freezes
    from virtplan.cache import cache_dir
    from virtplan.engine import Engine
    from virtplan.model import load_stack

    say = say or (lambda _m: None)
    started = time.perf_counter()
    src = load_stack(source, host_uris)
    assert src.path is not None
    out = opts.out or src.path.parent / f"{opts.name}.py"
    if out.exists():
        raise CloneError(f"{out} already exists; pick another --name (or destroy that stack and remove the file)")
    clone_stack = _stack_key(out)
    # Under the source's lock from the freeze until the clone's overlays exist: nothing merges
    # the frozen files back meanwhile (see virtplan.apply.layers.compact_vm).
    with Engine(src) as engine, engine.locked():
        for host in src.hosts:  # layers earlier clones and snapshots left: merged back first
            for note in compact_host(engine.connection(host.name), engine.store, host.uri, host.name).notes:
                say(note)
        observation = engine.observe()
        deployed_check(engine, observation)
        d = design_clone(src, observation, opts)
        uris = {h.name: h.uri for h in src.hosts}
        made = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _dry_run(src, d, opts, uris, out, made)  # invalid clones fail here, before any freezing
        frozen = frozen_states(engine, observation, d, opts, say, clone_stack)
        images = cache_dir() / "clone-images" / opts.name
        mode = fill_disks(engine, d, frozen, opts, images, say)
        text = clone_program(src, d, opts, uris, out, mode, made)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        say(f"wrote {out}")
        result = CloneResult(
            opts.name, out, {v.source.name: v.name for v in d.vms},
            {n.source.split(" ")[0]: (n.name, n.cidr) for n in d.nets},
            {f"{vm}/{volume}": f.path for (vm, volume), f in frozen.items()},
            mode,
        )  # fmt: skip
        if apply:
            try:
                apply_clone(out, say)
            except VirtplanError as exc:
                raise CloneError(f"{exc}\nThe clone's program is {out}: `virtplan apply {out}` completes the clone, "
                                 f"`virtplan destroy {out}` removes what was made") from exc  # fmt: skip
            for host in src.hosts:  # the clone's overlays (or copies) exist: they hold what they need
                release_freezes(engine.store, host.uri, clone_stack)
                if opts.full:  # full copies need the frozen files no longer: merged back at once
                    compact_host(engine.connection(host.name), engine.store, host.uri, host.name)
    result.seconds = time.perf_counter() - started
    return result


def _stack_key(program: Path) -> str:
    """The stack identity the clone's program will have (its file name, in its project)."""
    from virtplan.model.identity import project_of

    project = project_of(program.resolve())
    return f"{project}/{program.stem}" if project else program.stem


def _dry_run(src: Stack, d: Design, opts: CloneOptions, uris: dict[str, str], out: Path, made: str) -> None:
    """Write the program with stand-in disks to a scratch file and validate it."""
    from virtplan.model import load_stack

    volumes = [disk.volume for v in d.vms for disk in v.disks]
    volumes += [x for v in d.vms for x in (v.kernel, v.initrd) if x is not None]
    saved = [(vol, dataclasses.replace(vol)) for vol in volumes]
    for vol in volumes:
        vol.size, vol.backing, vol.format = 1024**3, "/dev/null", "qcow2"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp) / out.name
            scratch.write_text(clone_program(src, d, opts, uris, scratch, "linked", made))
            load_stack(scratch)
    finally:
        for vol, copy in saved:
            vol.size, vol.backing, vol.format = copy.size, copy.backing, copy.format


def apply_clone(stack_file: Path, say: Progress) -> None:
    """Plan and apply the clone's stack (creates only)."""
    from virtplan.engine import Engine
    from virtplan.model import load_stack
    from virtplan.plan.planner import Action

    with Engine(load_stack(stack_file)) as engine, engine.locked():
        plan, observation = engine.plan()
        odd = [c for c in plan.changes if c.action != Action.CREATE]
        if odd:
            raise CloneError("the clone's plan is not only creations; nothing applied:\n"
                             + "\n".join(f"  - {c.action.value} {c.address}: {c.why}" for c in odd))  # fmt: skip
        say(f"applying {len(plan.changes)} creation(s)")
        engine.apply(plan, observation)
