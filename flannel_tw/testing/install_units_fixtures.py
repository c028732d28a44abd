"""Test helpers (formerly in tests/test_install_units.py), shared by
tests/integration/test_install_units.py, tests/unit/test_install_units.py.
(No test module imports another: what several need lives here.)"""

import os


def _exe(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(path, 0o755)
