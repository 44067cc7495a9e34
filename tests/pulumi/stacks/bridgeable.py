"""Fixture stack the pulumi-libvirt backend can express: overlay, fixed IP, bridge NIC, cloud-init."""

from virtplan import NIC, VM, CloudInit, Disk, Host, Network, Pool, Volume

Host("lab", uri="qemu+ssh://root@lab.example/system", domain_type="qemu")

net = Network("lab-net", mode="nat", cidr="10.30.0.0/24", domain="lab.test")
iso = Network("iso-net", mode="isolated", cidr="10.31.0.0/24", dhcp=False)
pool = Pool("lab-pool", path="/srv/lab-pool")
base = Volume("base.qcow2", pool=pool, size="1GiB")
root = Volume("app-root.qcow2", pool=pool, backing=base, size="2GiB")
data = Volume("app-data.qcow2", pool=pool, size="256MiB")

VM(
    "app",
    vcpus=2,
    memory="256MiB",
    disks=[root, Disk(data, bus="scsi")],
    nics=[NIC(net, ip="10.30.0.20"), NIC(iso), NIC(bridge="br0")],
    cloud_init=CloudInit(user="ops", password="s3cret-pw", packages=["curl"]),
    graphics="vnc",
    autostart=True,
    state="stopped",
    description="bridged app",
    console_log=False,  # the bridged provider has no serial log file
)
