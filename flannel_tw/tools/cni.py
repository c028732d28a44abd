# -*- test-case-name: tests.unit.test_cni -*-
"""
``flannel-tw cni``: the CNI plugin ``flannel`` (CNI spec 0.1.0 - 1.0.0), doing what
flannel's own CNI plugin does (containernetworking/plugins, plugins/meta/flannel):

- ADD reads subnet.env (config ``subnetFile``, default /run/flannel/subnet.env) and
  delegates to ``bridge`` (config ``delegate`` may override) with a ``host-local``
  IPAM over FLANNEL_SUBNET (``ranges``), a route to FLANNEL_NETWORK, ``mtu`` =
  FLANNEL_MTU, ``ipMasq`` = not FLANNEL_IPMASQ and ``isGateway`` true. The
  rendered delegate config is saved as ``<dataDir>/<CNI_CONTAINERID>`` (dataDir
  default /var/lib/cni/flannel, mode 0600) before the delegate runs.
- DEL feeds that saved config to the delegate's DEL and removes the file once
  the delegate succeeded; nothing saved means nothing to do (success).
- CHECK checks what flannel owns: the saved config exists and the addresses
  in ``prevResult`` are still inside FLANNEL_SUBNET (see L{cmd_check}).
- VERSION prints the supported versions.

The delegate runs as libcni's invoke does: the executable named by its ``type``
is looked up in ``CNI_PATH``, run with our environment (CNI_COMMAND set to the
operation) and the delegate config on stdin; its stdout is the result or a CNI
error, which is passed on.

Errors are the spec's error JSON on stdout (``cniVersion``, ``code``, ``msg``,
``details``) with exit status 1. Codes: 1 incompatible version, 4 bad
environment, 5 I/O failure, 6 undecodable config, 7 invalid config, 11 try again
later (subnet.env missing: flannel is not up yet), 100 plugin error (delegate not
found or failed without a well-formed CNI error).

Everything from outside is checked where it comes in: the environment (CNI_CONTAINERID
as the spec's rule, whole string), every config field flannel reads (L{parse_netconf};
``prevResult`` in CHECK), the saved delegate config and the delegate's answer (an
error's ``code`` must be a positive integer). A bug still answers error JSON (100),
never a traceback (L{main}); tests/unit/test_cni.py fuzzes the config with hypothesis.
The checks live in L{flannel_tw.tools.cni_config}; this module runs the commands.

Runtimes find the plugin by type ``flannel`` in CNI_PATH: install flannel_tw/deploy/cni/flannel
(``exec flannel-tw cni``) there.
"""
import json
import os
import subprocess
import sys
from ipaddress import ip_interface

from flannel_tw.host.subnetfile import write_atomic

# load_subnet_env, parse_netconf, delegate_config & co. are also the plugin's API (cni.X)
from flannel_tw.tools.cni_config import (  # noqa: F401
    ABOUT,
    check_environment,
    CNIError,
    CURRENT_VERSION,
    delegate_config,
    delegate_ipam,
    INCOMPATIBLE_VERSION,
    IO_FAILURE,
    parse_netconf,
    load_subnet_env,
    PLUGIN_ERROR,
    SUPPORTED_VERSIONS,
    UNKNOWN_CONTAINER,
    _check_plugin_type,
    _DELEGATE_TIMEOUT,
    _invalid,
    _kind,
    _version_tuple)


# -- delegate -------------------------------------------------------------------------

def find_plugin(name, cni_path):
    """The executable C{name} in the colon-separated C{cni_path}; raises CNIError 100."""
    _check_plugin_type(name, "delegate type")
    dirs = [d for d in cni_path.split(os.pathsep) if d]
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CNIError(PLUGIN_ERROR, "failed to find plugin %r in path %s" % (name, dirs))


def invoke(command, netconf, environ, runner=subprocess.run):
    """
    Run the delegate plugin for C{command} with C{netconf} (a dict) on stdin.

    @return: the parsed result dict (ADD), or None (DEL, CHECK; or empty output).
    @raise CNIError: the delegate's own error when it printed one, else 100.
    """
    plugin = find_plugin(netconf.get("type"), environ.get("CNI_PATH", ""))
    env = dict(environ)
    env["CNI_COMMAND"] = command
    try:
        cp = runner([plugin], input=json.dumps(netconf).encode("utf-8"), env=env,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    timeout=_DELEGATE_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as e:
        raise CNIError(PLUGIN_ERROR, "failed to run delegate %s" % plugin, str(e))
    out = (cp.stdout or b"").strip()
    parsed = None
    if out:
        try:
            parsed = json.loads(out.decode("utf-8", "replace"))
        except (ValueError, RecursionError):
            parsed = None
    if cp.returncode != 0:
        what = "failed to delegate %s" % command.lower()
        if isinstance(parsed, dict) and "code" in parsed:
            code = parsed["code"]
            if type(code) is int and 0 < code < 2 ** 31:
                raise CNIError(code, "%s: %s" % (what, _text(parsed.get("msg"))),
                               _text(parsed.get("details")))
            raise CNIError(PLUGIN_ERROR, "%s: %s exited with %s and a malformed error "
                           "(code %s)" % (what, plugin, cp.returncode, _text(code)),
                           out.decode("utf-8", "replace"))
        err = (cp.stderr or b"").decode("utf-8", "replace").strip()
        raise CNIError(PLUGIN_ERROR, "%s: %s exited with %s" % (what, plugin, cp.returncode),
                       err or out.decode("utf-8", "replace"))
    if command == "ADD" and not isinstance(parsed, dict):
        raise CNIError(PLUGIN_ERROR, "delegate %s printed no result" % plugin,
                       out.decode("utf-8", "replace"))
    return parsed


def _text(value):
    """A field of the delegate's error as text: strings as they are, null as "", other
    JSON values as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


# -- scratch files (the saved delegate configs) -------------------------------------------

def scratch_path(data_dir, container_id):
    return os.path.join(data_dir, container_id)


def save_scratch(data_dir, container_id, netconf):
    """Save the delegate config (0600, the directory 0700), symlink-safe and atomic."""
    try:
        write_atomic(scratch_path(data_dir, container_id), json.dumps(netconf), mode=0o600,
                     dir_mode=0o700)
    except OSError as e:
        raise CNIError(IO_FAILURE, "failed to save the delegate config in %s" % data_dir, str(e))


def load_scratch(data_dir, container_id):
    """The saved delegate config (a JSON object), or None when there is none."""
    path = scratch_path(data_dir, container_id)
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:
        raise CNIError(IO_FAILURE, "failed to read the saved delegate config %s" % path,
                       str(e) or e.__class__.__name__)
    if not isinstance(saved, dict):
        raise CNIError(IO_FAILURE, "the saved delegate config %s is not a JSON object" % path)
    return saved


# -- commands -------------------------------------------------------------------------

def cmd_add(conf, environ, runner=subprocess.run):
    fenv = load_subnet_env(conf["subnetFile"])
    netconf = delegate_config(conf, fenv)
    save_scratch(conf["dataDir"], environ["CNI_CONTAINERID"], netconf)
    return invoke("ADD", netconf, environ, runner)


def cmd_del(conf, environ, runner=subprocess.run):
    netconf = load_scratch(conf["dataDir"], environ["CNI_CONTAINERID"])
    if netconf is None:
        return None          # per spec: already gone is not an error
    invoke("DEL", netconf, environ, runner)
    try:
        os.unlink(scratch_path(conf["dataDir"], environ["CNI_CONTAINERID"]))
    except FileNotFoundError:
        pass
    return None


def cmd_check(conf, environ, runner=subprocess.run):
    """
    What flannel owns: the container is known (its saved delegate config exists)
    and the addresses in C{prevResult} still lie in the subnet of subnet.env (a
    moved lease leaves containers with stale addresses). The delegate's CHECK is
    not run: flannel's own plugin checks nothing, and the reference bridge
    plugin's CHECK (containernetworking-plugins 1.1) rejects the gateway-less
    routes of flannel's delegate config, although ADD installed them correctly.
    """
    if _version_tuple(conf.get("cniVersion") or "0.1.0") < (0, 4, 0):
        raise CNIError(INCOMPATIBLE_VERSION, "config version does not allow CHECK",
                       "CHECK needs cniVersion 0.4.0 or later")
    netconf = load_scratch(conf["dataDir"], environ["CNI_CONTAINERID"])
    if netconf is None:
        raise CNIError(UNKNOWN_CONTAINER, "no saved flannel config for container %s"
                       % environ["CNI_CONTAINERID"])
    fenv = load_subnet_env(conf["subnetFile"])
    subnets = [fenv["subnet"]] + ([fenv["ipv6_subnet"]] if fenv["ipv6_subnet"] else [])
    for addr in _prev_addresses(conf.get("prevResult") or {}):
        if not any(addr in ip_interface(s).network for s in subnets):
            raise CNIError(PLUGIN_ERROR, "container address %s is outside flannel's subnet %s"
                           % (addr, ", ".join(subnets)),
                           "the lease in %s changed; the container needs a new address"
                           % conf["subnetFile"])
    return None


def _prev_addresses(prev):
    """The addresses of C{prevResult}'s ``ips``; CNIError 7 for a malformed one."""
    ips = prev.get("ips")
    if ips is None:
        return []
    if not isinstance(ips, list):
        raise _invalid("prevResult.ips must be a JSON array", "got %s" % (_kind(ips),))
    out = []
    for entry in ips:
        address = entry.get("address") if isinstance(entry, dict) else None
        try:
            if not isinstance(address, str):
                raise ValueError("not a string")
            out.append(ip_interface(address).ip)
        except ValueError:
            raise _invalid("prevResult.ips has a malformed entry",
                           json.dumps(entry)[:200])
    return out


def version_info():
    return {"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def run(environ, stdin_data, runner=subprocess.run):
    """
    One plugin invocation. @return: C{(exit status, output dict or None)}; the
    output is the result (ADD), version info (VERSION) or a CNI error.
    """
    version = CURRENT_VERSION
    try:
        command = check_environment(environ)
        if command == "VERSION":
            return 0, version_info()
        conf = parse_netconf(stdin_data)
        version = conf.get("cniVersion") or version
        handler = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check}[command]
        return 0, handler(conf, environ, runner)
    except CNIError as e:
        return 1, e.as_json(version)


def main(argv=None, environ=None, stdin=None, stdout=None, stderr=None):
    """``flannel-tw cni``: the CNI protocol on the process's environment, stdin and stdout."""
    environ = os.environ if environ is None else environ
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    argv = list(argv or [])
    if not environ.get("CNI_COMMAND") or argv[:1] in (["-h"], ["--help"]):
        stderr.write(ABOUT + "\n")
        stderr.write("usage: CNI_COMMAND=ADD|DEL|CHECK|VERSION CNI_CONTAINERID=... "
                     "CNI_NETNS=... CNI_IFNAME=... CNI_PATH=... flannel-tw cni < netconf.json\n")
        return 0     # as libcni's skel: no CNI_COMMAND prints what this is
    stdin = stdin if stdin is not None else sys.stdin.buffer
    interactive = getattr(stdin, "isatty", lambda: False)()
    # VERSION's stdin ({"cniVersion": ...}) is read but not needed; never wait on a terminal
    try:
        data = b"" if environ.get("CNI_COMMAND") == "VERSION" and interactive else stdin.read()
        code, output = run(environ, data)
    except Exception as e:      # a bug: still the spec's error JSON, never a traceback
        code, output = 1, CNIError(PLUGIN_ERROR, "flannel-tw cni: internal error",
                                   "%s: %s" % (e.__class__.__name__, e)).as_json()
    if output is not None:
        stdout.write(json.dumps(output) + "\n")
        stdout.flush()
    return code
