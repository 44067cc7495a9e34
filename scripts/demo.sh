#!/usr/bin/env bash
# The demo on a fresh Debian machine: install what is missing, then apply stacks/demo.py
# to a local libvirt (started privately if none runs) and show the running VMs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m virtplan_lab.demo "$@"
