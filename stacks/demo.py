"""Demo stack: one host, a NAT network, a pool and two small VMs that really boot.

The VMs boot virtplan's probe guest (a Debian cloud kernel and a busybox initramfs, built
from Debian packages and cached): it takes its address by DHCP, reads its cloud-init seed
and prints what it found on its serial console, so `virtplan show` can confirm from
inside each guest that the network and the seed work. `VIRTPLAN_URI` (or
`--host local=URI`) picks the host.
"""

import os

from virtplan import NIC, VM, CloudInit, Host, Network, Pool, Volume, name_stack
from virtplan_lab.probe import build_probe

# The stack's identity on its hosts: "virtplan/demo" (the project comes from Pulumi.yaml).
name_stack("demo")

# VIRTPLAN_DEMO_GUESTS=none declares the VMs without a guest OS or seed (blank disks only),
# for libvirt's in-process test driver, which can neither upload images nor boot anything.
GUESTS = os.environ.get("VIRTPLAN_DEMO_GUESTS", "probe")

# Guests here boot under software emulation: declare the domain type, don't guess it.
local = Host("local", uri="qemu:///system", domain_type="qemu")

net = Network("demo-net", mode="nat", cidr="10.77.0.0/24", domain="demo.test")
pool = Pool("demo-pool", path="/var/lib/libvirt/images/virtplan-demo")

boot = {}
if GUESTS == "probe":
    probe = build_probe()  # cached; rebuilt only when the Debian package versions change
    boot = {
        "kernel": Volume("probe-vmlinuz", pool=pool, source=probe.kernel, format="raw"),
        "initrd": Volume("probe-initrd.img", pool=pool, source=probe.initrd, format="raw"),
        "cmdline": probe.cmdline,
    }

# demo-1 gets a fixed address (a DHCP reservation); demo-2 one from the DHCP range.
for i, ip in enumerate(["10.77.0.10", None], start=1):
    disk = Volume(f"demo-{i}.qcow2", pool=pool, size="1GiB")
    VM(
        f"demo-{i}",
        vcpus=1,
        memory="128MiB",
        max_memory="256MiB",
        disks=[disk],
        nics=[NIC(net, ip=ip)],
        **boot,
        cloud_init=CloudInit(hostname=f"demo-{i}", user_data=f"#cloud-config\nprobe_value: hello from demo-{i}\n")
        if GUESTS == "probe"
        else None,
        description=f"virtplan demo VM {i}",
        shutdown_timeout=30,
    )
