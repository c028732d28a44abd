# -*- test-case-name: tests.unit.test_install_units, tests.integration.test_install_units -*-
"""
``flannel-tw install-units``: write the systemd units (and the CNI plugin shim) with the
absolute paths of the install this command runs from.

systemd (and a container runtime running a CNI plugin) does not search a virtualenv,
so the shipped files in L{flannel_tw.deploy} name the documented default location,
a venv at C{/opt/flannel-tw} (C{/opt/flannel-tw/bin/twistd},
C{/opt/flannel-tw/bin/flannel-tw}). This command rewrites that bin directory to the
running install's (the directory of C{sys.executable}, or C{sys.prefix}/bin) and
writes:

- C{DEST/flanneld.service} and C{DEST/flanneld.service.d/60-docker-opts.conf};
- C{/etc/flannel/options.env}, only when absent: an operator's edited file is kept;
- with C{--tls}: C{flanneld.service.d/50-ssl.conf};
- with C{--network-config}: C{flanneld.service.d/50-network-config.conf} and
  C{/etc/flannel/network.json} (only when absent);
- with C{--docker}: C{docker.service.d/40-flannel.conf} (with the dockerd found on PATH);
- with C{--cni-dir DIR}: the CNI plugin C{DIR/flannel}; with C{--cni-conf-dir DIR}
  also C{DIR/10-flannel.conflist} (only when absent).

Every file is written atomically (a temp file renamed over it), and only when its
content differs, so running it twice changes nothing. C{--root DIR} puts every file
under DIR (for packaging and tests); the paths inside the files are not changed.
"""
import argparse
import contextlib
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass

from flannel_tw.host.subnetfile import write_atomic

#: The bin directory the shipped units and the CNI shim name.
DEFAULT_BIN_DIR = "/opt/flannel-tw/bin"
DEFAULT_DEST = "/etc/systemd/system"
ETC_DIR = "/etc/flannel"
DEFAULT_DOCKERD = "/usr/bin/dockerd"
ENTRY_POINTS = ("twistd", "flannel-tw")
#: The shipped files (package data of the wheel: flannel_tw/deploy).
DEPLOY_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "deploy")


class InstallError(Exception):
    """Nothing was written; the message says why."""


@dataclass(frozen=True)
class Item:
    """One file to write: where, what, its mode, and whether an existing file is kept."""

    path: str
    text: str
    mode: int = 0o644
    keep_existing: bool = False


def shipped(*parts):
    """The text of a shipped file, e.g. C{shipped("systemd", "flanneld.service")}."""
    with open(os.path.join(DEPLOY_DIR, *parts), encoding="utf-8") as f:
        return f.read()


def render(text, bin_dir):
    """C{text} with the default bin directory replaced by C{bin_dir} (absolute)."""
    if not os.path.isabs(bin_dir):
        raise InstallError("the bin directory must be an absolute path, not %r" % (bin_dir,))
    return text.replace(DEFAULT_BIN_DIR + "/", bin_dir.rstrip("/") + "/")


def _has_entry_points(d):
    return all(os.access(os.path.join(d, n), os.X_OK) for n in ENTRY_POINTS)


def find_bin_dir(executable=None, prefix=None, scripts=None):
    """
    The bin directory of the running install: the directory of C{executable} (default
    C{sys.executable}, not resolved: a venv's python is often a symlink out of the
    venv), else C{prefix}/bin (default C{sys.prefix}), else C{scripts} (default
    sysconfig's scripts path, e.g. /usr/local/bin for pip with Debian's python),
    the first that holds both C{twistd} and C{flannel-tw}.

    @raise InstallError: when none does.
    """
    executable = sys.executable if executable is None else executable
    prefix = sys.prefix if prefix is None else prefix
    scripts = sysconfig.get_path("scripts") if scripts is None else scripts
    candidates = []
    if executable:
        candidates.append(os.path.dirname(os.path.abspath(executable)))
    candidates.append(os.path.join(os.path.abspath(prefix), "bin"))
    if scripts:
        candidates.append(os.path.abspath(scripts))
    for d in candidates:
        if _has_entry_points(d):
            return d
    raise InstallError("no %s next to this Python (looked in %s); give the install's "
                       "bin directory with --bin-dir"
                       % (" and ".join(ENTRY_POINTS), ", ".join(dict.fromkeys(candidates))))


def plan(bin_dir, dest=DEFAULT_DEST, tls=False, network_config=False, docker=False,
         dockerd=None, cni_dir=None, cni_conf_dir=None):
    """The L{Item}s to write (paths without the C{--root}), in order."""
    units = [("flanneld.service",), ("flanneld.service.d", "60-docker-opts.conf")]
    if tls:
        units.append(("flanneld.service.d", "50-ssl.conf"))
    if network_config:
        units.append(("flanneld.service.d", "50-network-config.conf"))
    items = [Item(os.path.join(dest, *u), render(shipped("systemd", *u), bin_dir))
             for u in units]
    if docker:
        text = shipped("systemd", "docker.service.d", "40-flannel.conf")
        if dockerd:
            text = text.replace("ExecStart=%s " % DEFAULT_DOCKERD, "ExecStart=%s " % dockerd)
        items.append(Item(os.path.join(dest, "docker.service.d", "40-flannel.conf"), text))
    items.append(Item(os.path.join(ETC_DIR, "options.env"), shipped("systemd", "options.env"),
                      keep_existing=True))
    if network_config:
        items.append(Item(os.path.join(ETC_DIR, "network.json"),
                          shipped("systemd", "network.json"), keep_existing=True))
    if cni_dir:
        items.append(Item(os.path.join(cni_dir, "flannel"),
                          render(shipped("cni", "flannel"), bin_dir), mode=0o755))
    if cni_conf_dir:
        items.append(Item(os.path.join(cni_conf_dir, "10-flannel.conflist"),
                          shipped("cni", "10-flannel.conflist"), keep_existing=True))
    return items


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return ""   # exists, unreadable or not text: differs from anything we write


def apply(items, root="/", dry_run=False):
    """
    Write the items under C{root}. Returns C{[(path, status)]}, status one of
    C{"written"}, C{"unchanged"}, C{"kept"} (an existing file left as it is), with
    C{"would be "} before the first two on a dry run. Raises OSError.
    """
    done = []
    for item in items:
        path = os.path.join(root, item.path.lstrip("/"))
        current = _read(path)
        if current is not None and item.keep_existing:
            status = "kept" if current != item.text else "unchanged"
        elif current == item.text and (os.stat(path).st_mode & 0o7777) == item.mode:
            status = "unchanged"
        else:
            status = "written"
            if not dry_run:
                write_atomic(path, item.text, mode=item.mode)
        if dry_run and status in ("written", "unchanged"):
            status = "would be " + status
        done.append((path, status))
    return done


def _env_endpoints(text):
    """The FLANNELD_ETCD_ENDPOINTS set in an options.env text, or None."""
    value = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("FLANNELD_ETCD_ENDPOINTS="):
            value = line.split("=", 1)[1].strip().strip("'\"")
    return value


def _parser():
    p = argparse.ArgumentParser(
        prog="flannel-tw install-units",
        description="Write flanneld.service and its drop-ins (and the CNI plugin) with the "
                    "absolute paths of this install. Existing files with other content are "
                    "replaced, except /etc/flannel/options.env, /etc/flannel/network.json "
                    "and the CNI conflist, which are only created. Then run: "
                    "systemctl daemon-reload && systemctl enable --now flanneld")
    p.add_argument("--dest", default=DEFAULT_DEST,
                   help="systemd unit directory (default: %(default)s)")
    p.add_argument("--bin-dir", help="the bin directory holding twistd and flannel-tw "
                   "(default: this install's, found from the running Python)")
    p.add_argument("--tls", action="store_true",
                   help="also the TLS drop-in 50-ssl.conf (https://127.0.0.1:2379, "
                        "certificates in $ETCD_SSL_DIR, default /etc/ssl/etcd)")
    p.add_argument("--network-config", action="store_true",
                   help="also the drop-in 50-network-config.conf, which publishes "
                        "/etc/flannel/network.json with 'flannel-tw config set' before "
                        "each start (and an example network.json when there is none)")
    p.add_argument("--docker", action="store_true",
                   help="also docker.service.d/40-flannel.conf (Docker on the flannel network)")
    p.add_argument("--dockerd", help="dockerd's path for --docker (default: the dockerd "
                   "on PATH, else %s)" % DEFAULT_DOCKERD)
    p.add_argument("--cni-dir", help="write the CNI plugin 'flannel' into this directory "
                   "(the runtime's CNI_PATH, e.g. /opt/cni/bin)")
    p.add_argument("--cni-conf-dir", help="write 10-flannel.conflist into this directory "
                   "(e.g. /etc/cni/net.d) unless it exists")
    p.add_argument("--root", default="/", help="write everything under this directory "
                   "instead of / (packaging, tests); the paths in the files stay as they are")
    p.add_argument("--dry-run", action="store_true", help="say what would be written, "
                   "write nothing")
    return p


def main(argv, stdout=None, stderr=None):
    """Returns 0, 1 (nothing or not everything written, the reason on stderr) or 2 (usage)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = _parser()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit as e:   # argparse: --help (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else 2
    for name in ("dest", "bin_dir", "cni_dir", "cni_conf_dir", "dockerd", "root"):
        value = getattr(args, name)
        if value is not None and not os.path.isabs(value):
            stderr.write("flannel-tw install-units: --%s must be an absolute path, not %r\n"
                         % (name.replace("_", "-"), value))
            return 2
    try:
        bin_dir = args.bin_dir or find_bin_dir()
        if args.bin_dir and not _has_entry_points(bin_dir):
            raise InstallError("%s holds no executable %s" % (bin_dir, " and ".join(ENTRY_POINTS)))
        dockerd = args.dockerd or shutil.which("dockerd") or DEFAULT_DOCKERD
        items = plan(bin_dir, dest=args.dest, tls=args.tls, network_config=args.network_config,
                     docker=args.docker, dockerd=dockerd, cni_dir=args.cni_dir,
                     cni_conf_dir=args.cni_conf_dir)
        done = apply(items, root=args.root, dry_run=args.dry_run)
    except InstallError as e:
        stderr.write("flannel-tw install-units: %s\n" % (e,))
        return 1
    except OSError as e:
        stderr.write("flannel-tw install-units: %s\n" % (e,))
        return 1
    stdout.write("flannel-tw install-units: commands from %s\n" % (bin_dir,))
    for path, status in done:
        stdout.write("  %-18s %s\n" % (status, path))
    options = os.path.join(args.root, ETC_DIR.lstrip("/"), "options.env")
    endpoints = _env_endpoints(_read(options) or "")
    if args.tls and endpoints and "http://" in endpoints:
        stderr.write("flannel-tw install-units: warning: %s sets FLANNELD_ETCD_ENDPOINTS=%s, "
                     "which wins over 50-ssl.conf's https endpoint: write https:// URLs "
                     "there\n" % (options, endpoints))
    if not args.dry_run and args.root == "/" and any(s == "written" for _, s in done):
        stdout.write("next: systemctl daemon-reload && systemctl enable --now flanneld\n")
    return 0
