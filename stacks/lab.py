"""Lab stack: two hypervisors, three web servers on copy-on-write overlays, one database.

- kvm1 runs web1..web3: each a qcow2 overlay on one uploaded base image, with cloud-init
  (an ops user, an SSH key, nginx) and a fixed IP handed out as a DHCP reservation.
- kvm2 runs db1: an overlay root disk plus a separate raw data volume.

The base image is a local file uploaded through libvirt's stream API, so remote hosts
work too: `images/base.qcow2` beside this file, or the path in VIRTPLAN_LAB_IMAGE.
Point the hosts somewhere else without editing: --host kvm1=URI --host kvm2=URI.
"""

import os
from pathlib import Path

from virtplan import NIC, VM, CloudInit, Disk, Host, Network, Pool, Volume, name_stack

# The stack's identity on its hosts: "virtplan/lab" (the project comes from Pulumi.yaml).
name_stack("lab")

IMAGE = Path(os.environ.get("VIRTPLAN_LAB_IMAGE", Path(__file__).parent / "images" / "base.qcow2"))
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHn0s7+0lBtqv0HkzX6BnnRy3L4nq1m3lBjw3Yx2vOps ops@lab"

kvm1 = Host("kvm1", uri="qemu+ssh://root@kvm1.lab/system", domain_type="qemu")
kvm2 = Host("kvm2", uri="qemu+ssh://root@kvm2.lab/system", domain_type="qemu")


def site(host: Host, subnet: str) -> tuple[Network, Pool, Volume]:
    """What every lab host has: a NAT network, a pool, and the base image in it."""
    net = Network(
        "lab-net", host=host, cidr=subnet, domain="lab.test", dhcp_range=(subnet[:-4] + "100", subnet[:-4] + "199")
    )
    pool = Pool("lab-pool", host=host, path="/var/lib/libvirt/images/lab")
    base = Volume("base.qcow2", pool=pool, source=IMAGE)
    return net, pool, base


def web_init(name: str) -> CloudInit:
    return CloudInit(hostname=name, user="ops", ssh_keys=[SSH_KEY], packages=["nginx"])


net1, pool1, base1 = site(kvm1, "10.20.1.0/24")
for i in (1, 2, 3):
    root = Volume(f"web{i}.qcow2", pool=pool1, backing=base1)
    VM(
        f"web{i}",
        host=kvm1,
        vcpus=1,
        memory="256MiB",
        max_memory="512MiB",
        disks=[Disk(root, boot=1)],
        nics=[NIC(net1, ip=f"10.20.1.{10 + i}")],
        cloud_init=web_init(f"web{i}"),
        description=f"web server {i}",
        shutdown_timeout=10,
    )

net2, pool2, base2 = site(kvm2, "10.20.2.0/24")
db_root = Volume("db1.qcow2", pool=pool2, backing=base2)
db_data = Volume("db1-data.raw", pool=pool2, size="2GiB", format="raw")
VM(
    "db1",
    host=kvm2,
    vcpus=2,
    memory="512MiB",
    disks=[Disk(db_root, boot=1), Disk(db_data, bus="scsi")],
    nics=[NIC(net2, ip="10.20.2.10")],
    cloud_init=CloudInit(hostname="db1", user="ops", ssh_keys=[SSH_KEY], packages=["postgresql"]),
    description="database",
    shutdown_timeout=10,
)
