# -*- test-case-name: tests.unit.test_subnetfile -*-
"""
subnet.env (flannel-compat.md section 5): rendering, parsing, atomic writing, and
the Docker options that mk-docker-opts.sh derives from it. Pure apart from file I/O.
"""
import os
import re
import tempfile
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from typing import Dict, Optional


class SubnetFileError(ValueError):
    """A missing or malformed subnet.env; the message names the file and the problem."""


_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*", re.ASCII)
_CIDR_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}/\d{1,2}", re.ASCII)
_DOUBLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "$": "$"}


def render_subnet_env(network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool,
                      ipv6_network: Optional[IPv6Network] = None,
                      ipv6_subnet: Optional[IPv6Network] = None) -> str:
    """
    FLANNEL_NETWORK, FLANNEL_SUBNET (lease address + 1 / prefix), then with IPv6
    (C{ipv6_network} and C{ipv6_subnet} given) FLANNEL_IPV6_NETWORK and
    FLANNEL_IPV6_SUBNET (the v6 subnet's first host address / prefix, e.g.
    C{2001:cafe:42::1/64}), then FLANNEL_MTU, FLANNEL_IPMASQ: flanneld v0.20's order.
    """
    text = ("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s/%d\n"
            % (network, subnet.network_address + 1, subnet.prefixlen))
    if ipv6_network is not None and ipv6_subnet is not None:
        text += ("FLANNEL_IPV6_NETWORK=%s\nFLANNEL_IPV6_SUBNET=%s/%d\n"
                 % (ipv6_network, ipv6_subnet.network_address + 1, ipv6_subnet.prefixlen))
    return text + ("FLANNEL_MTU=%d\nFLANNEL_IPMASQ=%s\n" % (mtu, "true" if ipmasq else "false"))


def _parse_value(raw: str, lineno: int) -> str:
    """The value part of one line: quoted (with trailing comment allowed) or bare."""
    if raw[:1] in ("'", '"'):
        quote, out, i = raw[0], [], 1
        while i < len(raw) and raw[i] != quote:
            if quote == '"' and raw[i] == "\\" and i + 1 < len(raw):
                out.append(_DOUBLE_ESCAPES.get(raw[i + 1], "\\" + raw[i + 1]))
                i += 2
                continue
            out.append(raw[i])
            i += 1
        rest = raw[i + 1:].strip()
        if i >= len(raw) or (rest and not rest.startswith("#")):
            raise SubnetFileError("line %d: unterminated or malformed %s-quoted value"
                                  % (lineno, quote))
        return "".join(out)
    m = re.search(r"(^|\s)#", raw)         # an inline comment needs whitespace before '#'
    return (raw[:m.start()] if m else raw).strip()


def parse_env(text: str) -> Dict[str, str]:
    """KEY=VALUE lines (godotenv-like: comments, blank lines, optional quotes, ``export``)."""
    env: Dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export"):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            raise SubnetFileError("line %d: expected KEY=VALUE, got %r" % (lineno, line))
        if not _KEY_RE.fullmatch(key):
            raise SubnetFileError("line %d: invalid variable name %r" % (lineno, key))
        env[key] = _parse_value(value.strip(), lineno)
    return env


MAX_ENV_SIZE = 64 * 1024       # subnet.env is ~100 bytes; anything this big is not one


def read_env(path: str) -> Dict[str, str]:
    """parse_env of a file; SubnetFileError names the file (missing, unreadable, larger
    than MAX_ENV_SIZE, malformed)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ENV_SIZE + 1)
    except FileNotFoundError:
        raise SubnetFileError("%s: no such file" % (path,))
    except (OSError, ValueError) as e:       # ValueError: a NUL in the path
        raise SubnetFileError("%s: cannot read: %s" % (path, getattr(e, "strerror", None) or e))
    if len(data) > MAX_ENV_SIZE:
        raise SubnetFileError("%s: larger than %d bytes" % (path, MAX_ENV_SIZE))
    try:
        return parse_env(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise SubnetFileError("%s: not UTF-8 text" % (path,))
    except SubnetFileError as e:
        raise SubnetFileError("%s: %s" % (path, e))


def write_atomic(path: str, text: str, mode: int = 0o644, dir_mode: int = 0o755) -> None:
    """
    Write C{text} to C{path} atomically: create the directory (C{dir_mode}, minus the
    umask, as Go's MkdirAll), write a temp file in it, give it C{mode} exactly, fsync it,
    rename it over C{path}, fsync the directory.

    Symlink-safe: the temp file has a random name (``.<name>.XXXXXXXX``) created with
    O_CREAT|O_EXCL|O_NOFOLLOW (tempfile.mkstemp), so nothing planted in the directory is
    opened, written or chmod'ed (flanneld's fixed ``.<name>`` is not used). A symlink AT
    C{path} is replaced by the regular file (rename(2) never follows its destination, as
    flanneld's rename), never written through: its target is untouched. Concurrent
    writers each have their own temp file, so readers see one writer's whole text.

    Blocking (fsync): the daemon calls it in a thread. Raises OSError; the temp file is
    removed on failure.
    """
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, dir_mode, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix="." + name + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fchmod(f.fileno(), mode)    # exact mode, whatever the umask
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable; a filesystem that cannot fsync a directory is let be."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def parse_interface(value: str) -> IPv4Interface:
    """``10.5.72.1/24`` -> IPv4Interface; ValueError unless a dotted quad with a /prefix."""
    if not _CIDR_RE.fullmatch(value) or int(value.rsplit("/", 1)[1]) > 32:
        raise ValueError("not an IPv4 address with a /prefix: %r" % (value,))
    return IPv4Interface(value)


_CIDR6_RE = re.compile(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*/\d{1,3}", re.ASCII)


def parse_interface6(value: str) -> IPv6Interface:
    """``2001:cafe:42::1/64`` -> IPv6Interface; ValueError unless an IPv6 address (no
    zone) with a /prefix of at most 128."""
    if not _CIDR6_RE.fullmatch(value) or int(value.rsplit("/", 1)[1]) > 128:
        raise ValueError("not an IPv6 address with a /prefix: %r" % (value,))
    return IPv6Interface(value)


@dataclass(frozen=True)
class PreviousSubnets:
    """
    The subnets of an earlier run, from subnet.env: C{subnet} (FLANNEL_SUBNET, masked),
    C{ipv6_subnet} (FLANNEL_IPV6_SUBNET, masked; None when absent), and C{problem}: why
    the file was not used (a hostile or broken file counts as absent: both None), or None.
    """
    subnet: Optional[IPv4Network] = None
    ipv6_subnet: Optional[IPv6Network] = None
    problem: Optional[str] = None


def read_previous_subnets(path: str) -> PreviousSubnets:
    """
    FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET from an earlier run, masked (10.5.72.1/24 ->
    10.5.72.0/24, 2001:cafe:42::1/64 -> 2001:cafe:42::/64). A missing file is no
    problem (a first start); a file that cannot be read or parsed, or whose
    FLANNEL_SUBNET is absent or not an IPv4 CIDR, or whose FLANNEL_IPV6_SUBNET (when
    present) is not an IPv6 CIDR, is used as if absent, with C{problem} saying why (for
    one warning).
    """
    try:
        env = read_env(path)
    except SubnetFileError as e:
        if not os.path.lexists(path):
            return PreviousSubnets()
        return PreviousSubnets(problem=str(e))
    try:
        subnet = parse_interface(env.get("FLANNEL_SUBNET", "")).network
    except ValueError:
        return PreviousSubnets(problem="%s: FLANNEL_SUBNET=%.60r is not an IPv4 address with "
                                       "a /prefix" % (path, env.get("FLANNEL_SUBNET", "")))
    ipv6_subnet = None
    if "FLANNEL_IPV6_SUBNET" in env:
        try:
            ipv6_subnet = parse_interface6(env["FLANNEL_IPV6_SUBNET"]).network
        except ValueError:
            return PreviousSubnets(problem="%s: FLANNEL_IPV6_SUBNET=%.60r is not an IPv6 "
                                           "address with a /prefix"
                                           % (path, env["FLANNEL_IPV6_SUBNET"]))
    return PreviousSubnets(subnet, ipv6_subnet)


def read_previous_subnet(path: str) -> Optional[IPv4Network]:
    """FLANNEL_SUBNET from an earlier run, masked (10.5.72.1/24 -> 10.5.72.0/24).

    None if the file is missing, unreadable or malformed, or FLANNEL_SUBNET is absent/bad.
    """
    try:
        return parse_interface(read_env(path)["FLANNEL_SUBNET"]).network
    except (SubnetFileError, KeyError, ValueError):
        return None


def _require(env: Dict[str, str], var: str) -> str:
    value = env.get(var, "")
    if not value:
        raise SubnetFileError("%s is missing" % (var,))
    return value


def render_docker_opts(env: Dict[str, str], individual: bool = True, combined: bool = True,
                       key: str = "DOCKER_OPTS", ipmasq: bool = True, existing: str = "") -> str:
    """mk-docker-opts.sh's output for a parsed subnet.env; raises SubnetFileError.

    FLANNEL_SUBNET and FLANNEL_MTU are required. An empty or absent FLANNEL_IPMASQ
    leaves --ip-masq out, as the script does. With both ``individual`` and
    ``combined`` false the result is empty (the caller applies "neither means both").
    A dual-stack file (FLANNEL_IPV6_SUBNET; mk-docker-opts.sh has no IPv6) adds
    Docker's own ``DOCKER_OPT_IPV6="--ipv6"`` and ``DOCKER_OPT_FIXED_CIDR_V6=
    "--fixed-cidr-v6=<the v6 subnet's network>"`` (docker0 then takes its ::1).
    """
    subnet = _require(env, "FLANNEL_SUBNET")
    try:
        parse_interface(subnet)
    except ValueError:
        raise SubnetFileError("FLANNEL_SUBNET=%s is not an IPv4 address with a /prefix" % subnet)
    mtu = _require(env, "FLANNEL_MTU")
    if not (mtu.isascii() and mtu.isdigit() and int(mtu) > 0):
        raise SubnetFileError("FLANNEL_MTU=%s is not a positive integer" % (mtu,))
    opts = {"DOCKER_OPT_BIP": "--bip=" + subnet, "DOCKER_OPT_MTU": "--mtu=" + mtu}
    subnet6 = env.get("FLANNEL_IPV6_SUBNET", "")
    if subnet6:
        try:
            network6 = parse_interface6(subnet6).network
        except ValueError:
            raise SubnetFileError("FLANNEL_IPV6_SUBNET=%s is not an IPv6 address with a "
                                  "/prefix" % (subnet6,))
        opts["DOCKER_OPT_IPV6"] = "--ipv6"
        opts["DOCKER_OPT_FIXED_CIDR_V6"] = "--fixed-cidr-v6=%s" % (network6,)
    masq = env.get("FLANNEL_IPMASQ", "")
    if masq and ipmasq:
        if masq not in ("true", "false"):
            raise SubnetFileError("Invalid value of FLANNEL_IPMASQ: %s" % (masq,))
        opts["DOCKER_OPT_IPMASQ"] = "--ip-masq=" + ("false" if masq == "true" else "true")
    lines = []
    combined_value = existing + " " if existing else ""
    for name in sorted(opts):
        if individual:
            lines.append('%s="%s"\n' % (name, opts[name]))
        combined_value += " " + opts[name]
    if combined:
        lines.append('%s="%s"\n' % (key, combined_value))
    return "".join(lines)
