"""A stack program configured from Pulumi (tests/pulumi_engine/test_cli_config_secrets.py).

    pulumi config set vmCount 2
    pulumi config set --secret rootPassword ...
    pulumi config set --secret vncPassword ...      # VNC allows 8 characters

The secrets reach the guests through `text()`: inside the raw user-data (an f-string) and as
the VNC console password. Guests boot the probe (direct kernel boot) and report from inside.
"""

import pulumi

from virtplan import NIC, VM, CloudInit, Graphics, Host, Network, Pool, Volume
from virtplan.pulumi import text
from virtplan_lab.probe import build_probe

config = pulumi.Config()  # the project's namespace: virtplan:vmCount, virtplan:rootPassword, ...
count = config.get_int("vmCount") or 1
root_password = config.require_secret("rootPassword")
vnc_password = config.require_secret("vncPassword")

Host("local", uri="qemu:///system", domain_type="qemu")
net = Network("cfg-net", cidr="10.78.0.0/24")
pool = Pool("cfg-pool", path="/var/lib/libvirt/images/cfg")
boot = Pool("cfg-boot", path="/var/lib/libvirt/images/cfg-boot")
probe = build_probe()
kernel = Volume("probe-vmlinuz", pool=boot, source=probe.kernel, format="raw")
initrd = Volume("probe-initrd.img", pool=boot, source=probe.initrd, format="raw")

for i in range(1, count + 1):
    VM(
        f"cfg-{i}",
        memory="128MiB",
        disks=[Volume(f"cfg-{i}.qcow2", pool=pool, size="64MiB")],
        nics=[NIC(net)],
        kernel=kernel,
        initrd=initrd,
        cmdline=probe.cmdline,
        cloud_init=CloudInit(
            hostname=f"cfg-{i}",
            user_data=f"#cloud-config\nprobe_value: cfg-{i}\nchpasswd: {{expire: false}}\npassword: {text(root_password)}\n",
        ),
        graphics=Graphics("vnc", password=text(vnc_password)),
        shutdown_timeout=30,
    )
