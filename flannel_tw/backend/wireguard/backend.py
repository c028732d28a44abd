# -*- test-case-name: tests.unit.test_wg_backend, tests.lab.test_wireguard -*-
"""
The wireguard backend (flanneld v0.20.2's C{backend/wireguard}, reference section D):
every packet between hosts is encrypted by a WireGuard device, the kernel module's or
wireguard-go's (L{flannel_tw.backend.wireguard.device.open_device} chooses).

- prepare(): options (L{options.parse_options}); the private key from
  C{$WIREGUARD_KEY_FILE} or C{wgkey} beside the subnet file (L{key.load_or_create});
  the device C{flannel-wg} (and C{flannel-wg-v6} in separate mode when the config
  enables IPv6) with the key and C{ListenPort} (C{ListenPortV6}); MTU = ext MTU - 80;
  lease C{{"PublicIP":...,"BackendType":"wireguard","BackendData":{"PublicKey":"<b64>"}}}
  (and C{BackendV6Data} with the same key in dual-stack).
- start(): C{<subnet addr>/32} on the device, the MTU, up, and one scope-link route for
  the whole flannel network (the same in v6: C{/128}, the IPv6 network).
- handle_events(): one peer per remote wireguard lease (L{peers.lease_peers}); a removed
  lease removes its peer (by key), a new key replaces it, and a lease whose PublicIP
  another lease had with another key removes that lease's peer (flanneld). Other types
  are ignored, a lease without a usable PublicKey skipped, each with one warning per
  lease. One batch of events is one C{set_peers} per device; events arriving while it
  is in flight make up the next; a failed batch is retried after L{RETRY_DELAY} s.
- reconcile(): the first lease list removes device peers whose lease is gone.
- stop(): the devices are removed (flanneld removes its device on shutdown; wireguard-go
  is stopped).

The PSK and the private key never appear in a log line or an error message.
"""
import os
from ipaddress import IPv4Network, ip_interface, ip_network

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from flannel_tw.backend.wireguard import key as wgkey
from flannel_tw.backend.wireguard.options import IPV6, SEPARATE, OptionsError, parse_options
from flannel_tw.backend.wireguard.peers import (
    V4, V6, desired, endpoint_text, lease_attrs, lease_peers, peer_key)
from flannel_tw.interfaces import (
    IBackend, ICountingBackend, IReconcilingBackend, IReconfiguringBackend)
from flannel_tw.model.events import ADDED, REMOVED

DEVICE = "flannel-wg"
DEVICE_V6 = "flannel-wg-v6"
OVERHEAD = 80           # outer IPv6 40 + UDP 8 + WireGuard 32 (flanneld: ext MTU - 80)
RETRY_DELAY = 5.0       # seconds before a failed set_peers batch is tried again
LOG_EACH = 10           # batches up to this size log every peer; bigger ones a summary
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"


class WireguardError(Exception):
    """The wireguard backend cannot run with this config here."""


@implementer(IBackend, IReconcilingBackend, IReconfiguringBackend, ICountingBackend)
class WireguardBackend:
    """
    L{IBackend} for the wireguard type. C{devices} (family -> L{IWireguardDevice}),
    C{key} (L{key.PrivateKey}) and C{options} are valid after prepare().

    @param subnet_file: the daemon's subnet file: the key file C{wgkey} and the device
        layer's state live in its directory.
    @param environ: for C{WIREGUARD_KEY_FILE} (default C{os.environ}).
    @param open_device: L{flannel_tw.backend.wireguard.device.open_device} (tests: a fake).
    @param configure_link: C{(ifname, address, mtu, route)}, blocking
        (L{flannel_tw.kernel.netlink.configure_link}); run with C{to_thread}.
    """

    name = "wireguard"
    log = Logger()

    def __init__(self, reactor, ext_iface, subnet_file=DEFAULT_SUBNET_FILE, environ=None,
                 open_device=None, configure_link=None, to_thread=None,
                 retry_delay=RETRY_DELAY):
        self._reactor = reactor
        self.ext_iface = ext_iface
        self.subnet_file = subnet_file
        self._environ = os.environ if environ is None else environ
        self._open_device = open_device
        self._configure_link = configure_link
        self._to_thread = to_thread or threads.deferToThread
        self.retry_delay = retry_delay
        self.mtu = None
        self.options = None
        self.key = None
        self.key_file = None
        self.devices = {}           # V4/V6 -> device (one object twice in single-device modes)
        self.enable_ipv6 = False
        self.network = None
        self.network6 = None
        self.own_subnet = None
        self.own_subnet6 = None
        self.wanted = {}            # subnet -> {device name: WgPeer}, newest event last
        self._by_ip = {}            # endpoint IP -> {subnet: None} of wanted (same-endpoint rule)
        self.installed = {}         # device name -> {public key: WgPeer} as last set
        self.warned = {}            # subnet -> the warning given about its lease
        self.counters = {"peer_batches": 0, "peer_batch_failures": 0, "peers_added": 0,
                         "peers_removed": 0, "leases_skipped": 0}
        self._lock = defer.DeferredLock()
        self._flush_queued = False
        self._retry = None
        self._stopped = False

    # -- set-up ---------------------------------------------------------------

    @defer.inlineCallbacks
    def prepare(self, config):
        """
        @return: Deferred firing with our L{LeaseAttrs}; fails with L{OptionsError} (bad
            options), L{WireguardError}, L{key.KeyFileError}, or the device layer's
            error (L{device.WireguardUnavailable}: neither the kernel module nor
            wireguard-go).
        """
        self.options = parse_options(config.backend)
        self.enable_ipv6 = bool(getattr(config, "enable_ipv6", False))
        mode = self.options.mode
        if mode == IPV6 and not self.enable_ipv6:
            raise OptionsError("Backend.Mode ipv6 needs an IPv6 network (EnableIPv6)")
        has_v6 = self.ext_iface.public_ipv6 is not None
        if self.enable_ipv6 and not has_v6:
            if mode == IPV6:
                raise WireguardError("Backend.Mode ipv6: %s has no IPv6 address chosen (use "
                                     "--public-ipv6)" % (self.ext_iface.name,))
            # e.g. an IPv4 --iface without --public-ipv6: flanneld v0.20 then publishes no
            # PublicIPv6 either; peers cannot reach our IPv6 side
            self.log.warn("wireguard backend: EnableIPv6 is set but {iface} has no IPv6 "
                          "address chosen: no PublicIPv6{more}", iface=self.ext_iface.name,
                          more=", no flannel-wg-v6" if mode == SEPARATE else "")
        self.key_file = wgkey.key_path(self.subnet_file, self._environ)
        self.key = wgkey.load_or_create(self.key_file)
        state_dir = os.path.dirname(os.path.abspath(self.subnet_file))
        self.mtu = self.ext_iface.mtu - OVERHEAD
        wanted = [(V4, DEVICE, self.options.listen_port)]
        if self.enable_ipv6 and mode == SEPARATE and has_v6:
            wanted.append((V6, DEVICE_V6, self.options.listen_port_v6))
        for family, name, port in wanted:
            device = yield self._open(self._reactor, name, state_dir,
                                      on_recreated=self._recreated)
            self.devices[family] = device
            self.installed[device.name] = {}
            yield device.configure(self.key.raw, port)
            self.log.info("wireguard backend: {dev} ({kind}) listening on UDP {port}, "
                          "public key {key}, key file {path}, MTU {mtu}",
                          dev=device.name, kind=device.kind, port=port,
                          key=self.key.public_b64, path=self.key_file, mtu=self.mtu)
        if self.enable_ipv6 and mode != SEPARATE and has_v6:
            self.devices[V6] = self.devices[V4]
        return lease_attrs(self.ext_iface.public_ip, self.key.public,
                           self.ext_iface.public_ipv6, self.enable_ipv6)

    def _open(self, *args, **kw):
        if self._open_device is None:
            from flannel_tw.backend.wireguard.device import open_device
            self._open_device = open_device
        return self._open_device(*args, **kw)

    def _link(self, *args):
        if self._configure_link is None:
            from flannel_tw.kernel.netlink import configure_link
            self._configure_link = configure_link
        return self._to_thread(self._configure_link, *args)

    @defer.inlineCallbacks
    def start(self, config, lease):
        """Address, MTU, up and the network route on our device(s). Deferred."""
        if not self.devices:
            raise RuntimeError("wireguard backend: start() before prepare()")
        self.network = IPv4Network(config.network)
        self.own_subnet = lease.subnet
        self.own_subnet6 = getattr(lease, "ipv6_subnet", None)
        self.network6 = getattr(config, "ipv6_network", None) if self.enable_ipv6 else None
        for subnet in {lease.subnet, self.own_subnet6} & set(self.wanted):
            self._unwant(subnet)
            self._queue_flush()
        yield self._configure_links()

    reconfigure = start        # a moved lease: the new address replaces the old one

    @defer.inlineCallbacks
    def _configure_links(self, only=None):
        for family, subnet, network in ((V4, self.own_subnet, self.network),
                                        (V6, self.own_subnet6, self.network6)):
            device = self.devices.get(family)
            if device is None or subnet is None or network is None:
                continue
            if only is not None and device is not only:
                continue
            plen = 32 if family == V4 else 128
            address = ip_interface("%s/%d" % (subnet.network_address, plen))
            yield self._link(device.name, address, self.mtu, ip_network(network))
            self.log.info("wireguard backend: {dev} has {address}, MTU {mtu}, up; route "
                          "{network} dev {dev} scope link", dev=device.name,
                          address=address, mtu=self.mtu, network=network)

    def _recreated(self, device):
        """wireguard-go was restarted (a new link): put the address and route back."""
        self.log.warn("wireguard backend: {dev} was recreated; adding its address and "
                      "route again", dev=device.name)
        return self._configure_links(only=device)

    def stop(self):
        """Remove the device(s) (flanneld does on shutdown). Deferred."""
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        devices = list({id(d): d for d in self.devices.values()}.values())
        return self._lock.run(lambda: defer.DeferredList(
            [defer.maybeDeferred(d.close) for d in devices], consumeErrors=True))

    # -- events -----------------------------------------------------------------

    def handle_events(self, events):
        """Apply a list of lease events: one set_peers per device for all of them."""
        for event in events:
            try:
                self._event(event)
            except Exception:
                self.log.failure("wireguard backend: bad lease event for {subnet}",
                                 subnet=getattr(event.lease, "subnet", None))
        self._queue_flush()

    def _event(self, event):
        lease = event.lease
        subnet = lease.subnet
        if subnet == self.own_subnet:
            return
        if event.kind == REMOVED:
            self.warned.pop(subnet, None)
            self._unwant(subnet)
            return
        if event.kind != ADDED:
            return
        kind = lease.attrs.backend_type if lease.attrs is not None else ""
        if kind != self.name:
            self._unwant(subnet)
            self._warn(subnet, lease, "Ignoring non-wireguard subnet %s (PublicIP %s, "
                       "type %r)" % (subnet, lease.attrs.public_ip if lease.attrs else None,
                                    kind or "udp"))
            return
        try:
            peers = self._peers(lease)
        except ValueError as e:
            self._unwant(subnet)
            self._warn(subnet, lease, "wireguard backend: skipping the lease of %s "
                       "(PublicIP %s): %s" % (subnet, lease.attrs.public_ip, e))
            return
        self.warned.pop(subnet, None)
        # same endpoint IP, another key: that host has a new key, its old peer goes
        for dev, peer in peers.items():
            if not peer.endpoint:
                continue
            for other in list(self._by_ip.get(peer.endpoint[0], ())):
                old = self.wanted[other].get(dev)
                if (other != subnet and old is not None and old.endpoint
                        and old.endpoint[0] == peer.endpoint[0]
                        and old.public_key != peer.public_key):
                    self.log.info("wireguard backend: {ip} now has key {key} (lease "
                                  "{subnet}); removing the peer of lease {other}",
                                  ip=peer.endpoint[0], key=wgkey.encode(peer.public_key),
                                  subnet=subnet, other=other)
                    self._unwant(other)
        self._unwant(subnet)                 # newest last
        self.wanted[subnet] = peers
        for peer in peers.values():
            if peer.endpoint:
                self._by_ip.setdefault(peer.endpoint[0], {})[subnet] = None

    def _unwant(self, subnet):
        peers = self.wanted.pop(subnet, None)
        for peer in (peers or {}).values():
            if peer.endpoint:
                subnets = self._by_ip.get(peer.endpoint[0], {})
                subnets.pop(subnet, None)
                if not subnets:
                    self._by_ip.pop(peer.endpoint[0], None)

    def _warn(self, subnet, lease, message):
        if self.warned.get(subnet) != message:
            self.warned[subnet] = message
            self.counters["leases_skipped"] += 1
            self.log.warn("{message}", message=message)

    def _peers(self, lease):
        """@raise ValueError: see L{peers.lease_peers}."""
        return lease_peers(lease, self.options, self.key.public,
                           {family: dev.name for family, dev in self.devices.items()},
                           self.ext_iface.public_ipv6)

    # -- batches ----------------------------------------------------------------

    def _desired(self):
        """device name -> {public key: WgPeer} (L{peers.desired})."""
        return desired(self.wanted.values(), self.installed)

    def _queue_flush(self):
        if not self._flush_queued and not self._stopped and self.devices:
            self._flush_queued = True
            self._lock.run(self._flush).addErrback(
                lambda f: self.log.failure("wireguard backend: peer batch failed", f))

    @defer.inlineCallbacks
    def _flush(self):
        """Apply the difference between wanted and installed: one set_peers per device."""
        self._flush_queued = False
        if self._stopped:
            return
        desired = self._desired()
        failed = False
        for device in {id(d): d for d in self.devices.values()}.values():
            have = self.installed[device.name]
            want = desired[device.name]
            upserts = [p for k, p in want.items() if have.get(k) != p]
            removals = [k for k in have if k not in want]
            if not upserts and not removals:
                continue
            self.counters["peer_batches"] += 1
            started = self._reactor.seconds()
            try:
                yield device.set_peers(upserts, removals)
            except Exception as e:
                failed = True
                self.counters["peer_batch_failures"] += 1
                self.log.error("wireguard backend: {dev}: setting {n} peers and removing "
                               "{m} failed: {error}; retrying in {delay}s", dev=device.name,
                               n=len(upserts), m=len(removals), error=self._redact(e),
                               delay=self.retry_delay)
                continue
            for k in removals:
                del have[k]
            for p in upserts:
                have[p.public_key] = p
            self.counters["peers_added"] += len(upserts)
            self.counters["peers_removed"] += len(removals)
            self._log_batch(device, upserts, removals, self._reactor.seconds() - started)
        if failed and not self._stopped and (self._retry is None or not self._retry.active()):
            self._retry = self._reactor.callLater(self.retry_delay, self._queue_flush)

    def _log_batch(self, device, upserts, removals, took):
        if len(upserts) + len(removals) > LOG_EACH:
            self.log.info("wireguard backend: {dev}: batch of {n} peers set and {m} removed "
                          "in {took:.2f}s ({total} peers)", dev=device.name, n=len(upserts),
                          m=len(removals), took=took, total=len(self.installed[device.name]))
            return
        for k in removals:
            self.log.info("wireguard backend: {dev}: removed peer {key}", dev=device.name,
                          key=wgkey.encode(k))
        for p in upserts:
            self.log.info("wireguard backend: {dev}: peer {key} endpoint {endpoint} "
                          "allowed-ips {allowed}", dev=device.name,
                          key=wgkey.encode(p.public_key), endpoint=endpoint_text(p.endpoint),
                          allowed=",".join(str(n) for n in p.allowed_ips))

    def _redact(self, error):
        """An error's text with any form of the PSK or private key taken out."""
        text = str(error) or type(error).__name__
        for secret in (self.options.psk if self.options else None,
                       self.key.raw if self.key else None):
            if secret:
                for form in (secret.hex(), wgkey.encode(secret), repr(secret)):
                    text = text.replace(form, "<secret>")
        return text

    def settle(self):
        """@return: Deferred firing when every batch queued so far is done (tests)."""
        return self._lock.run(lambda: None)

    # -- leftovers --------------------------------------------------------------

    def reconcile(self, leases):
        """
        The watcher's first full lease list: remove device peers whose lease is gone
        (keys of no wireguard lease in C{leases}). Queued before that list's events.

        @return: Deferred firing with the list of (device name, raw key) removed.
        """
        keep = set()
        for lease in leases:
            if lease.attrs is None or lease.attrs.backend_type != self.name:
                continue
            for data in (lease.attrs.backend_data,
                         getattr(lease.attrs, "backend_v6_data", None)):
                try:
                    keep.add(peer_key(data))
                except ValueError:
                    pass
        return self._lock.run(self._reconcile, keep)

    @defer.inlineCallbacks
    def _reconcile(self, keep):
        removed = []
        for device in {id(d): d for d in self.devices.values()}.values():
            try:
                present = yield device.peers()
                desired = self._desired()[device.name]
                stale = [k for k in present if k not in keep and k not in desired]
                if stale:
                    yield device.set_peers([], stale)
            except Exception as e:
                self.log.error("wireguard backend: {dev}: removing peers of leases gone "
                               "failed: {error}", dev=device.name, error=self._redact(e))
                continue
            for k in stale:
                self.installed[device.name].pop(k, None)
                removed.append((device.name, k))
                self.log.info("wireguard backend: {dev}: removed peer {key}, left from an "
                              "earlier run for a lease that no longer exists",
                              dev=device.name, key=wgkey.encode(k))
        return removed

