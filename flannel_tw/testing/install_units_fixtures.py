"""Test helpers (formerly in tests/test_install_units.py), shared by
tests/integration/test_install_units.py, tests/unit/test_install_units.py.

flannel_tw.tools.install (``flannel-tw install-units``): the bin directory of the running
install, the rendering of the shipped units with its absolute paths, atomic and
idempotent writes, the operator's options.env kept, dry runs, and the command line
(in-process and as a process)."""

import os


def _exe(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(path, 0o755)
