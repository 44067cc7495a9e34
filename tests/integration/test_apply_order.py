"""A change that takes what another change of the plan gives up waits for it (issue 11,
item 2), against a real private host through the CLI.

Each case is one where running both at once fails on a real libvirt: two running QEMUs
on one qcow2 ("Failed to get "write" lock"), a network defined on a bridge or subnet
another network holds, a pool at another pool's path. So an apply that succeeds proves
the order; the progress lines show it too.
"""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest
from review_support import Cli

HEADER = (
    'from virtplan import NIC, VM, Host, Network, Pool, Volume\nHost("h", uri="qemu:///system", domain_type="qemu")\n'
)


def done_order(out: str) -> list[str]:
    return [" ".join(line.split()[1:3]) for line in out.splitlines() if line.strip().startswith("done ")]


def apply(cli: Cli, stack: Path, body: str) -> str:
    stack.write_text(HEADER + body)
    return cli("apply", str(stack), "--yes", "--allow-destroy")


def test_a_renamed_running_vm_keeping_its_disk_never_runs_next_to_its_old_self(cli, conn, home):
    stack = home / "order-rename.py"
    pool = (
        'pool = Pool("ord-pool", path="/var/lib/libvirt/images/ord")\nd = Volume("d.qcow2", pool=pool, size="16MiB")\n'
    )
    apply(cli, stack, pool + 'VM("ord-old", memory="64MiB", disks=[d], shutdown_timeout=0)\n')
    out = apply(cli, stack, pool + 'VM("ord-new", memory="64MiB", disks=[d], shutdown_timeout=0)\n')
    order = done_order(out)
    assert order.index("delete h/vm/ord-old") < order.index("create h/vm/ord-new"), out
    assert conn.lookupByName("ord-new").isActive()
    cli("destroy", str(stack), "--yes", "--allow-destroy")


def test_a_disk_moved_to_another_vm_is_released_before_the_other_vm_starts_with_it(cli, conn, home):
    """vm ord-a gives up disk `data` (a restart: its vCPU maximum changes too; the blank
    guest makes the graceful stop last its full 5 s); the new ord-b takes it."""
    stack = home / "order-move.py"
    pool = (
        'pool = Pool("move-pool", path="/var/lib/libvirt/images/ord-move")\n'
        'root = Volume("a.qcow2", pool=pool, size="16MiB")\ndata = Volume("data.qcow2", pool=pool, size="16MiB")\n'
    )
    apply(cli, stack, pool + 'VM("ord-a", memory="64MiB", disks=[root, data], shutdown_timeout=5)\n')
    out = apply(
        cli,
        stack,
        pool
        + 'VM("ord-a", memory="64MiB", max_vcpus=2, disks=[root], shutdown_timeout=5)\n'
        + 'VM("ord-b", memory="64MiB", disks=[data], shutdown_timeout=0)\n',
    )
    order = done_order(out)
    assert order.index("restart h/vm/ord-a") < order.index("create h/vm/ord-b"), out
    assert conn.lookupByName("ord-a").isActive() and conn.lookupByName("ord-b").isActive()
    cli("destroy", str(stack), "--yes", "--allow-destroy")


def test_a_network_renamed_on_the_same_bridge_and_subnet_is_created_after_the_old_one_goes(cli, conn, home):
    stack = home / "order-net.py"
    vm = 'VM("ord-guest", memory="64MiB", nics=[net], shutdown_timeout=0)\n'
    apply(cli, stack, 'net = Network("ord-net-a", cidr="10.91.0.0/24", bridge="vp-ord")\n' + vm)
    out = apply(cli, stack, 'net = Network("ord-net-b", cidr="10.91.0.0/24", bridge="vp-ord")\n' + vm)
    order = done_order(out)
    assert order.index("delete h/network/ord-net-a") < order.index("create h/network/ord-net-b"), out
    assert conn.networkLookupByName("ord-net-b").isActive()
    with pytest.raises(libvirt.libvirtError):
        conn.networkLookupByName("ord-net-a")
    assert "network='ord-net-b'" in conn.lookupByName("ord-guest").XMLDesc(0)
    assert cli.run("plan", str(stack), "--detailed-exitcode").returncode == 0
    cli("destroy", str(stack), "--yes", "--allow-destroy")


def test_a_pool_renamed_at_the_same_path_is_created_after_the_old_one_goes(cli, conn, home):
    stack = home / "order-pool.py"
    apply(cli, stack, 'Pool("ord-p1", path="/var/lib/libvirt/images/ord-same")\n')
    out = apply(cli, stack, 'Pool("ord-p2", path="/var/lib/libvirt/images/ord-same")\n')
    order = done_order(out)
    assert order.index("delete h/pool/ord-p1") < order.index("create h/pool/ord-p2"), out
    assert conn.storagePoolLookupByName("ord-p2").isActive()
    cli("destroy", str(stack), "--yes", "--allow-destroy")


def test_destroy_deletes_a_direct_kernel_boot_vm_before_its_kernel_and_initrd(cli, conn, home):
    stack = home / "order-kernel.py"
    body = (
        'boot = Pool("ord-boot", path="/var/lib/libvirt/images/ord-boot")\n'
        'k = Volume("vmlinuz", pool=boot, size="1MiB", format="raw")\n'
        'i = Volume("initrd.img", pool=boot, size="1MiB", format="raw")\n'
        'VM("ord-k", memory="64MiB", kernel=k, initrd=i, cmdline="console=ttyS0", state="stopped")\n'
    )
    apply(cli, stack, body)
    out = cli("destroy", str(stack), "--yes", "--allow-destroy")
    order = done_order(out)
    vm = order.index("delete h/vm/ord-k")
    assert vm < order.index("delete h/volume/ord-boot/vmlinuz") and vm < order.index(
        "delete h/volume/ord-boot/initrd.img"
    ), out


def test_changes_that_wait_for_each_other_are_refused_at_plan_time(cli, conn, home):
    """Two networks swapping bridges: each would wait for the other."""
    stack = home / "order-swap.py"
    before = (
        'Network("sw-a", cidr="10.92.0.0/24", bridge="vp-sw1")\nNetwork("sw-b", cidr="10.93.0.0/24", bridge="vp-sw2")\n'
    )
    apply(cli, stack, before)
    stack.write_text(
        HEADER + before.replace("vp-sw1", "vp-swx").replace("vp-sw2", "vp-sw1").replace("vp-swx", "vp-sw2")
    )
    out = cli("plan", str(stack), rc=1)
    assert "wait for each other" in out, out
    stack.write_text(HEADER + before)
    cli("destroy", str(stack), "--yes", "--allow-destroy")
