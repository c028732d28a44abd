"""Test helpers (formerly in tests/test_install.py), shared by
tests/integration/test_install.py, tests/lab/test_install.py, tests/unit/test_install.py.
(No test module imports another: what several need lives here.)"""

import glob
import os
import shutil
import subprocess
import sys

from flannel_tw.tools.lab import run as labrun


ROOT = labrun.repo_root()


def _clean_env():
    """The environment a user's shell has: no PYTHONPATH, no venv of ours on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


def _run(argv, timeout=600, **kw):
    kw.setdefault("cwd", "/")
    kw.setdefault("env", _clean_env())
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=timeout, **kw)


class _Built:
    """The wheel and the sdist, built once per test run into one directory."""
    out = None
    wheel = None
    sdist = None
    error = None

    @classmethod
    def get(cls, testcase):
        if cls.out is None and cls.error is None:
            cls.out = os.path.abspath(testcase.mktemp())
            os.makedirs(cls.out)
            # Build from a copy: a build writes egg-info and build/ into its source
            # tree, and two test processes (trial -j) building one tree collide.
            src = os.path.join(cls.out, "src")
            shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
                ".git", ".venv", "_trial_temp*", "build", "dist", "*.egg-info",
                "__pycache__", ".hypothesis", "dropin.cache"))
            cp = _run([sys.executable, "-m", "build", "--sdist", "--wheel",
                       "--outdir", cls.out, src], timeout=600)
            if cp.returncode != 0:
                cls.error = "build failed:\n" + cp.stdout[-4000:]
            else:
                cls.wheel = glob.glob(os.path.join(cls.out, "*.whl"))[0]
                cls.sdist = glob.glob(os.path.join(cls.out, "*.tar.gz"))[0]
        if cls.error:
            testcase.fail(cls.error)
        return cls
