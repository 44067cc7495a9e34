"""Lab tooling for virtplan's tests, demo and benchmarks (not part of the virtplan wheel).

- `virtplan_lab.testbed`: private libvirtd + QEMU hosts in their own namespaces;
- `virtplan_lab.lab`: hosts that are machines on a private network (`labnet`), reached
  over qemu+ssh (a real sshd) and qemu+tls (certificates from `credentials`);
- `virtplan_lab.probe`: a tiny real Linux guest that reports from inside what it got;
- `virtplan_lab.demo`: the README's demo (`python -m virtplan_lab.demo`).
"""
