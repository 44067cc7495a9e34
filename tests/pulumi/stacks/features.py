"""Fixture stack for the native backend: two hosts, an overlay, cloud-init and console secrets."""

from virtplan import NIC, VM, CloudInit, Graphics, Host, Network, Pool, Volume

a = Host("a", uri="test:///default", domain_type="qemu")
b = Host("b", uri="test:///default", domain_type="qemu", workers=2)

# The same names on both hosts: Pulumi names are host-qualified, so they do not collide.
nets = {h.name: Network("lab", host=h, mode="nat", cidr="10.20.0.0/24", dhcp_range=("10.20.0.100", "10.20.0.150"))
        for h in (a, b)}  # fmt: skip
pools = {h.name: Pool("images", host=h, path=f"/srv/{h.name}/images") for h in (a, b)}

base = Volume("base.qcow2", pool=pools["a"], size="64MiB")
root = Volume("web-root.qcow2", pool=pools["a"], backing=base)

VM(
    "web",
    host=a,
    vcpus=2,
    memory="128MiB",
    disks=[root],
    nics=[NIC(nets["a"], ip="10.20.0.10"), NIC(bridge="br0", model="e1000", mac="52:54:00:aa:bb:cc")],
    cloud_init=CloudInit(user="ops", password="hunter2", ssh_keys=["ssh-ed25519 AAAA ops"]),
    graphics=Graphics("vnc", password="vnc-pass"),
    shutdown_timeout=2.5,
)
