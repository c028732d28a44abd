"""Test helpers (formerly in tests/test_process.py), shared by
tests/lab/test_health.py, tests/lab/test_process.py.
(No test module imports another: what several need lives here.)"""
import os
import time

from flannel_tw.tools.lab.topology import parse_subnet_env

CONFIG = '{"Network": "10.7.0.0/16", "Backend": {"Type": "alloc"}}'




def wait_for_subnet_env(testcase, path, proc, log, timeout=30, what="daemon"):
    """
    Poll until the daemon C{proc} writes the subnet file C{path}, then return it
    parsed; fail C{testcase} (showing C{log}) when the process exits or C{timeout}
    seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            testcase.fail("%s exited with %s:\n%s" % (what, proc.returncode, open(log).read()))
        if time.monotonic() > deadline:
            testcase.fail("no %s after %ss:\n%s" % (path, timeout, open(log).read()))
        time.sleep(0.1)
    return parse_subnet_env(path)
