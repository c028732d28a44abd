"""Test helpers (formerly in tests/test_cni.py), shared by
tests/integration/test_cni.py, tests/lab/test_cni.py, tests/unit/test_cni.py.
(No test module imports another: what several need lives here.)"""

import os


SUBNET_ENV = ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\n"
              "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")


def _write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path
