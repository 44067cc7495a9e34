"""Demo stack: one host, a NAT network, a pool and two small VMs.

Run it against any libvirt host; `VIRTPLAN_URI` (or `--host local=URI`) picks the host.
"""

from virtplan import NIC, VM, Host, Network, Pool, Volume

# Guests here boot under software emulation: declare the domain type, don't guess it.
local = Host("local", uri="qemu:///system", domain_type="qemu")

net = Network("demo-net", mode="nat", cidr="10.77.0.0/24", domain="demo.test")
pool = Pool("demo-pool", path="/var/lib/libvirt/images/virtplan-demo")

for i, ip in enumerate(["10.77.0.10", None], start=1):
    disk = Volume(f"demo-{i}.qcow2", pool=pool, size="1GiB")
    VM(
        f"demo-{i}",
        vcpus=1,
        memory="128MiB",
        max_memory="256MiB",
        disks=[disk],
        nics=[NIC(net, ip=ip)],
        description=f"virtplan demo VM {i}",
        shutdown_timeout=5,
    )
