#!/usr/bin/env bash
# Prepare a Debian 12 machine (as root) to develop and test virtplan; idempotent.
# Installs the Debian packages libvirt and QEMU need, the libvirt-qemu system user,
# and a virtualenv at .venv with virtplan (editable) and its dev tools.
# When all of that is already in place it changes nothing and takes about a second.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PACKAGES=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients   # the daemon under test
  qemu-system-x86 qemu-utils ovmf                             # guests, qemu-img, UEFI firmware
  dnsmasq-base iptables iproute2                              # libvirt NAT networks
  openssh-server openssh-client openssl                       # lab hosts over qemu+ssh:// and qemu+tls://
  busybox-static                                              # userland of the tiny test guest
  virtinst                                                    # virt-clone, compared in bench/clone.py
  genisoimage                                                 # seed ISOs in `plan --commands` (replayed in tests)
  openssh-client                                              # ssh-keygen in the Pulumi template (tests/pulumi_engine)
  libvirt-dev pkg-config gcc python3-dev                      # to compile libvirt-python
  python3-venv
)
VENV=.venv
STAMP="$VENV/.virtplan-setup"

say() { echo "setup: $*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup: must run as root" >&2
  exit 1
fi

missing_packages() {
  local pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null | grep -q '^ii' || echo "$pkg"
  done
}

mapfile -t missing < <(missing_packages)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  python3 -m venv "$VENV"
fi

# Reinstall only when the project's metadata changed (the install is editable).
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1) $("$VENV/bin/python" -V 2>&1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ]; then
  say "installing virtplan[dev] into $VENV"
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -e '.[dev]' \
      >"$VENV/pip.log" 2>&1; then
    tail -n 40 "$VENV/pip.log" >&2
    echo "setup: pip install failed (full log: $VENV/pip.log)" >&2
    exit 1
  fi
  echo "$wanted" > "$STAMP"
else
  say "$VENV up to date"
fi

say "system user libvirt-qemu"
"$VENV/bin/python" -c 'from virtplan_lab.testbed import ensure_system_prereqs as e; e()'
say "done"
