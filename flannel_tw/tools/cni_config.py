# -*- test-case-name: tests.unit.test_cni -*-
"""
The CNI plugin's input, checked where it comes in (pure, no subprocess): the spec's
error codes and L{CNIError}, the network config on stdin (L{parse_netconf}), the
environment (L{check_environment}), subnet.env (L{load_subnet_env}) and the delegate
config rendered from them (L{delegate_config}). L{flannel_tw.tools.cni} runs the
commands on top of it.
"""
import json
import os
import re
from ipaddress import IPv4Interface, ip_network

from flannel_tw.host.subnetfile import SubnetFileError, parse_interface6, read_env

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

# the spec's container ID (libcni's ValidateContainerID); matched with fullmatch: "$"
# would accept a trailing newline
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
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


def _invalid(what, details=""):
    return CNIError(INVALID_CONFIG, "invalid network config: %s" % (what,), details)


def _check_string(value, where, empty_ok=True):
    """A JSON string without NUL (paths, names, plugin types); CNIError 7 otherwise."""
    if not isinstance(value, str):
        raise _invalid("%s must be a JSON string" % (where,), "got %s" % (_kind(value),))
    if "\0" in value or (not empty_ok and not value):
        raise _invalid("%s must be a non-empty string without NUL" % (where,))
    return value


def _check_object(value, where):
    if not isinstance(value, dict):
        raise _invalid("%s must be a JSON object" % (where,), "got %s" % (_kind(value),))
    return value


def _check_plugin_type(value, where):
    """A plugin's type names an executable in CNI_PATH: a plain file name."""
    _check_string(value, where, empty_ok=False)
    if "/" in value or value in (".", ".."):
        raise _invalid("%s %r is not a plugin name" % (where, value))
    return value


def _kind(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "a number", float: "a number"}.get(type(value),
                                                                        type(value).__name__)


def parse_netconf(data):
    """
    The network config from stdin (bytes or str): a dict with defaults filled in
    (``subnetFile``, ``dataDir``, ``delegate`` = {}). Every field flannel reads is
    checked here, at the boundary: ``cniVersion``, ``name``, ``type``, ``subnetFile``,
    ``dataDir`` (strings; paths without NUL), ``delegate`` (an object; its ``type`` a
    plugin name), ``ipam`` (an object; ``type`` a plugin name, ``routes`` an array of
    objects), ``runtimeConfig`` and ``prevResult`` (objects; null is absent).
    ``prevResult``'s content is checked by CHECK, its only reader.

    @raise CNIError: 6 when it is not a JSON object (or nested too deeply to decode),
        7 when a field has the wrong type or value, 1 when cniVersion is not supported.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CNIError(DECODING_FAILURE, "failed to decode network config", "not UTF-8")
    try:
        conf = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise CNIError(DECODING_FAILURE, "failed to decode network config",
                       str(e) or e.__class__.__name__)
    if not isinstance(conf, dict):
        raise CNIError(DECODING_FAILURE, "failed to decode network config",
                       "expected a JSON object")
    version = conf.get("cniVersion")
    if version is not None:
        _check_string(version, "cniVersion")
    version = version or "0.1.0"            # the spec: absent or empty means 0.1.0
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       "config is %r, plugin supports %s" % (version, list(SUPPORTED_VERSIONS)))
    for key in ("name", "type", "subnetFile", "dataDir"):
        if conf.get(key) is not None:
            _check_string(conf[key], key)
    for key in ("delegate", "ipam", "runtimeConfig", "prevResult"):
        if conf.get(key) is not None:
            _check_object(conf[key], key)
    delegate = conf.get("delegate") or {}
    if "type" in delegate:
        _check_plugin_type(delegate["type"], "delegate.type")
    ipam = conf.get("ipam") or {}
    if "type" in ipam:
        _check_plugin_type(ipam["type"], "ipam.type")
    routes = ipam.get("routes")
    if routes is not None:
        if not isinstance(routes, list):
            raise _invalid("ipam.routes must be a JSON array", "got %s" % (_kind(routes),))
        for route in routes:
            _check_object(route, "each of ipam.routes")
    conf["subnetFile"] = conf.get("subnetFile") or DEFAULT_SUBNET_FILE
    conf["dataDir"] = conf.get("dataDir") or DEFAULT_DATA_DIR
    conf["delegate"] = dict(delegate)
    return conf


def load_subnet_env(path):
    """
    subnet.env as the plugin needs it: C{network}, C{subnet} (the network of
    FLANNEL_SUBNET, e.g. 10.1.74.0/24), C{mtu} (int), C{ipmasq} (bool), and the
    IPv6 pair when present (C{ipv6_network}, C{ipv6_subnet}; else None; an empty value
    is absent). A dual-stack file must have both IPv6 variables, each an IPv6 address
    with a /prefix (no zone), and each subnet must lie in its network.

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
        network6, subnet6 = env.get("FLANNEL_IPV6_NETWORK"), env.get("FLANNEL_IPV6_SUBNET")
        if network6 or subnet6:
            if not (network6 and subnet6):
                raise CNIError(INVALID_CONFIG, "%s has %s without %s" % (
                    (path, "FLANNEL_IPV6_SUBNET", "FLANNEL_IPV6_NETWORK") if subnet6 else
                    (path, "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET")))
            out["ipv6_network"] = str(_interface6("FLANNEL_IPV6_NETWORK", network6).network)
            out["ipv6_subnet"] = str(_interface6("FLANNEL_IPV6_SUBNET", subnet6).network)
    except ValueError as e:
        raise CNIError(INVALID_CONFIG, "%s: malformed value" % (path,), str(e))
    for net, sub, names in ((out["network"], out["subnet"], "FLANNEL_SUBNET/FLANNEL_NETWORK"),
                            (out["ipv6_network"], out["ipv6_subnet"],
                             "FLANNEL_IPV6_SUBNET/FLANNEL_IPV6_NETWORK")):
        if net is not None and not ip_network(sub).subnet_of(ip_network(net)):
            raise CNIError(INVALID_CONFIG, "%s: %s: subnet %s is not inside network %s"
                           % (path, names, sub, net))
    masq = need("FLANNEL_IPMASQ")
    if masq not in ("true", "false"):
        raise CNIError(INVALID_CONFIG, "%s: FLANNEL_IPMASQ must be true or false, not %r"
                       % (path, masq))
    out["ipmasq"] = masq == "true"
    return out


def _interface6(name, value):
    """An IPv6 address with a /prefix (no zone, no spaces); ValueError naming C{name}."""
    try:
        return parse_interface6(value)
    except ValueError:
        raise ValueError("%s=%r is not an IPv6 address with a /prefix" % (name, value))


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
    if not _CONTAINER_ID.fullmatch(cid):
        raise CNIError(INVALID_ENVIRONMENT, "invalid characters in containerID",
                       "CNI_CONTAINERID %r must match %s" % (cid, _CONTAINER_ID.pattern))
    ifname = environ["CNI_IFNAME"]
    if len(ifname) > 15 or ifname in (".", "..") or re.search(r"[/:\s]", ifname):
        raise CNIError(INVALID_ENVIRONMENT, "invalid CNI_IFNAME %r" % ifname)
    return command
