# -*- test-case-name: tests.test_cni -*-
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
found or failed without a CNI error).

Runtimes find the plugin by type ``flannel`` in CNI_PATH: install flannel_tw/deploy/cni/flannel
(``exec flannel-tw cni``) there.
"""
import json
import os
import re
import subprocess
import sys
from ipaddress import IPv4Interface, IPv6Interface, ip_interface

from flannel_tw.subnetfile import SubnetFileError, read_env

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
CURRENT_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")
ABOUT = "CNI flannel plugin (flannel-tw) supporting CNI spec %s" % ", ".join(SUPPORTED_VERSIONS)

# CNI spec error codes
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_ERROR = 100

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_DELEGATE_TIMEOUT = 60


class CNIError(Exception):
    """A CNI error result: C{code}, C{msg}, C{details}."""

    def __init__(self, code, msg, details=""):
        Exception.__init__(self, msg)
        self.code = code
        self.msg = msg
        self.details = details

    def as_json(self, version=CURRENT_VERSION):
        out = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


# -- configuration ----------------------------------------------------------------

def _version_tuple(v):
    try:
        return tuple(int(p) for p in v.split("."))
    except (AttributeError, ValueError):
        return None


def parse_netconf(data):
    """
    The network config from stdin (bytes or str): a dict with defaults filled in
    (``subnetFile``, ``dataDir``, ``delegate`` = {}).

    @raise CNIError: 6 when it is not a JSON object, 7 when a field has the wrong
        type, 1 when cniVersion is not supported.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CNIError(DECODING_FAILURE, "failed to decode network config", "not UTF-8")
    try:
        conf = json.loads(data)
    except ValueError as e:
        raise CNIError(DECODING_FAILURE, "failed to decode network config", str(e))
    if not isinstance(conf, dict):
        raise CNIError(DECODING_FAILURE, "failed to decode network config",
                       "expected a JSON object")
    version = conf.get("cniVersion", "0.1.0") or "0.1.0"
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       "config is %r, plugin supports %s" % (version, list(SUPPORTED_VERSIONS)))
    for key, kind in (("name", str), ("subnetFile", str), ("dataDir", str),
                      ("delegate", dict), ("ipam", dict), ("runtimeConfig", dict)):
        if key in conf and conf[key] is not None and not isinstance(conf[key], kind):
            raise CNIError(INVALID_CONFIG, "invalid network config",
                           "%s must be a JSON %s" % (key, "string" if kind is str else "object"))
    conf.setdefault("subnetFile", DEFAULT_SUBNET_FILE)
    conf["subnetFile"] = conf["subnetFile"] or DEFAULT_SUBNET_FILE
    conf["dataDir"] = conf.get("dataDir") or DEFAULT_DATA_DIR
    conf["delegate"] = dict(conf.get("delegate") or {})
    return conf


def load_subnet_env(path):
    """
    subnet.env as the plugin needs it: C{network}, C{subnet} (the network of
    FLANNEL_SUBNET, e.g. 10.1.74.0/24), C{mtu} (int), C{ipmasq} (bool), and the
    IPv6 pair when present (C{ipv6_network}, C{ipv6_subnet}; else None).

    @raise CNIError: 11 when the file is missing (flannel not running yet), 5 when
        unreadable, 7 when a variable is missing or malformed.
    """
    try:
        env = read_env(path)
    except SubnetFileError as e:
        if not os.path.exists(path):
            raise CNIError(TRY_AGAIN_LATER, "failed to load flannel 'subnet.env' file",
                           "%s. Check that flannel-tw is running on this host." % (e,))
        raise CNIError(IO_FAILURE, "failed to load flannel 'subnet.env' file", str(e))

    def need(key):
        if key not in env:
            raise CNIError(INVALID_CONFIG, "%s is missing %s" % (path, key))
        return env[key]

    out = {"ipv6_network": None, "ipv6_subnet": None}
    try:
        out["network"] = str(IPv4Interface(need("FLANNEL_NETWORK")).network)
        out["subnet"] = str(IPv4Interface(need("FLANNEL_SUBNET")).network)
        out["mtu"] = int(need("FLANNEL_MTU"), 10)
        if "FLANNEL_IPV6_NETWORK" in env:
            out["ipv6_network"] = str(IPv6Interface(env["FLANNEL_IPV6_NETWORK"]).network)
        if "FLANNEL_IPV6_SUBNET" in env:
            out["ipv6_subnet"] = str(IPv6Interface(env["FLANNEL_IPV6_SUBNET"]).network)
    except ValueError as e:
        raise CNIError(INVALID_CONFIG, "%s: malformed value" % (path,), str(e))
    masq = need("FLANNEL_IPMASQ")
    if masq not in ("true", "false"):
        raise CNIError(INVALID_CONFIG, "%s: FLANNEL_IPMASQ must be true or false, not %r"
                       % (path, masq))
    out["ipmasq"] = masq == "true"
    return out


def delegate_ipam(conf, fenv):
    """flannel's getDelegateIPAM: the config's ipam (type host-local by default), ranges and routes."""
    ipam = dict(conf.get("ipam") or {})
    ipam.setdefault("type", "host-local")
    ranges = [[{"subnet": fenv["subnet"]}]]
    if fenv.get("ipv6_subnet"):
        ranges.append([{"subnet": fenv["ipv6_subnet"]}])
    ipam["ranges"] = ranges
    routes = list(ipam.get("routes") or [])
    routes.append({"dst": fenv["network"]})
    if fenv.get("ipv6_network"):
        routes.append({"dst": fenv["ipv6_network"]})
    ipam["routes"] = routes
    return ipam


def delegate_config(conf, fenv):
    """
    The config handed to the delegate (flannel's doCmdAdd): C{delegate} with
    ``name``, ``type`` (bridge), ``ipMasq`` (not FLANNEL_IPMASQ), ``mtu``,
    ``isGateway`` (bridge only), ``cniVersion``, ``ipam``; keys the user set in
    C{delegate} are kept.
    """
    d = dict(conf["delegate"])
    d["name"] = conf.get("name", "")
    d.setdefault("type", "bridge")
    d.setdefault("ipMasq", not fenv["ipmasq"])
    d.setdefault("mtu", fenv["mtu"])
    if d["type"] == "bridge":
        d.setdefault("isGateway", True)
    if conf.get("cniVersion"):
        d["cniVersion"] = conf["cniVersion"]
    if conf.get("runtimeConfig"):
        d["runtimeConfig"] = conf["runtimeConfig"]
    d["ipam"] = delegate_ipam(conf, fenv)
    return d


# -- environment ----------------------------------------------------------------------

def check_environment(environ):
    """
    @return: the command (ADD, DEL, CHECK or VERSION).
    @raise CNIError: 4 naming the missing or invalid variables.
    """
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CNIError(INVALID_ENVIRONMENT, "unknown CNI_COMMAND: %r" % command)
    if command == "VERSION":
        return command
    required = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
                "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
                "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH")}[command]
    missing = [k for k in required if not environ.get(k)]
    if missing:
        raise CNIError(INVALID_ENVIRONMENT, "required env variables [%s] missing"
                       % ",".join(missing))
    cid = environ["CNI_CONTAINERID"]
    if not _CONTAINER_ID.match(cid):
        raise CNIError(INVALID_ENVIRONMENT, "invalid characters in containerID",
                       "CNI_CONTAINERID %r must match %s" % (cid, _CONTAINER_ID.pattern))
    ifname = environ["CNI_IFNAME"]
    if len(ifname) > 15 or ifname in (".", "..") or re.search(r"[/:\s]", ifname):
        raise CNIError(INVALID_ENVIRONMENT, "invalid CNI_IFNAME %r" % ifname)
    return command


# -- delegate -------------------------------------------------------------------------

def find_plugin(name, cni_path):
    """The executable C{name} in the colon-separated C{cni_path}; raises CNIError 100."""
    if not name or "/" in name:
        raise CNIError(INVALID_CONFIG, "invalid delegate plugin type %r" % (name,))
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
        except ValueError:
            parsed = None
    if cp.returncode != 0:
        what = "failed to delegate %s" % command.lower()
        if isinstance(parsed, dict) and "code" in parsed:
            raise CNIError(int(parsed.get("code") or PLUGIN_ERROR),
                           "%s: %s" % (what, parsed.get("msg", "")), parsed.get("details", ""))
        err = (cp.stderr or b"").decode("utf-8", "replace").strip()
        raise CNIError(PLUGIN_ERROR, "%s: %s exited with %s" % (what, plugin, cp.returncode),
                       err or out.decode("utf-8", "replace"))
    if command == "ADD" and not isinstance(parsed, dict):
        raise CNIError(PLUGIN_ERROR, "delegate %s printed no result" % plugin,
                       out.decode("utf-8", "replace"))
    return parsed


# -- scratch files (the saved delegate configs) -------------------------------------------

def scratch_path(data_dir, container_id):
    return os.path.join(data_dir, container_id)


def save_scratch(data_dir, container_id, netconf):
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        path = scratch_path(data_dir, container_id)
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(netconf, f)
        os.rename(tmp, path)
    except OSError as e:
        raise CNIError(IO_FAILURE, "failed to save the delegate config in %s" % data_dir, str(e))


def load_scratch(data_dir, container_id):
    """The saved delegate config, or None when there is none."""
    path = scratch_path(data_dir, container_id)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CNIError(IO_FAILURE, "failed to read the saved delegate config %s" % path, str(e))


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
    if _version_tuple(conf.get("cniVersion", "0.1.0")) < (0, 4, 0):
        raise CNIError(INCOMPATIBLE_VERSION, "config version does not allow CHECK",
                       "CHECK needs cniVersion 0.4.0 or later")
    netconf = load_scratch(conf["dataDir"], environ["CNI_CONTAINERID"])
    if netconf is None:
        raise CNIError(UNKNOWN_CONTAINER, "no saved flannel config for container %s"
                       % environ["CNI_CONTAINERID"])
    fenv = load_subnet_env(conf["subnetFile"])
    subnets = [fenv["subnet"]] + ([fenv["ipv6_subnet"]] if fenv["ipv6_subnet"] else [])
    prev = conf.get("prevResult") or {}
    for entry in prev.get("ips") or []:
        try:
            addr = ip_interface(entry.get("address", "")).ip
        except (ValueError, AttributeError):
            raise CNIError(DECODING_FAILURE, "prevResult has a malformed address: %r" % (entry,))
        if not any(addr in ip_interface(s).network for s in subnets):
            raise CNIError(PLUGIN_ERROR, "container address %s is outside flannel's subnet %s"
                           % (addr, ", ".join(subnets)),
                           "the lease in %s changed; the container needs a new address"
                           % conf["subnetFile"])
    return None


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
    data = b"" if environ.get("CNI_COMMAND") == "VERSION" and interactive else stdin.read()
    code, output = run(environ, data)
    if output is not None:
        stdout.write(json.dumps(output) + "\n")
        stdout.flush()
    return code
