# -*- test-case-name: tests.unit.test_capabilities, tests.unit.test_kernel_seam, tests.unit.test_registry -*-
"""
The seams of flannel-tw, as zope.interface declarations. Real implementations and
the test fakes both declare and are checked (``verifyObject``) against these.
"""
from zope.interface import Attribute, Interface


class ISubnetManager(Interface):
    """Network config and leases in a datastore (etcd v2 today)."""

    def get_network_config():
        """
        Fetch and validate the config.

        @return: Deferred firing with L{flannel_tw.model.config.NetworkConfig}; fails with
            L{flannel_tw.model.config.ConfigError} (bad config), L{flannel_tw.etcd.errors.KeyNotFound}
            (no config yet) or an etcd transport error.
        """

    def acquire_lease(config, attrs, previous_subnet=None, previous_ipv6_subnet=None):
        """
        Reuse our lease (same PublicIP), else C{previous_subnet} if nobody holds it,
        else allocate a free subnet and create it with prevExist=false. With
        C{config.enable_ipv6} the lease has a v6 part too (C{previous_ipv6_subnet} if it
        fits and nobody holds it, else a free one).

        @return: Deferred firing with L{flannel_tw.model.lease.Lease};
            fails with L{flannel_tw.lease.allocate.OutOfSubnets} or an etcd error.
        """

    reused_leases = Attribute(
        "subnet -> modifiedIndex of our write when acquire_lease last reused an existing "
        "lease (the keeper's probation, see flannel_tw.lease.keeper).")

    def renew_lease(lease):
        """
        Compare-and-swap of our own last write with ttl 86400 (no ttl for a reservation).

        @return: Deferred firing with the renewed L{flannel_tw.model.lease.Lease}.
        """

    def list_leases():
        """
        @return: Deferred firing with C{(leases, index)}; bad nodes are skipped. Keys are
            read as flanneld reads them (for allocation); each lease carries its key as
            stored in C{Lease.key}, and only an exact one may be routed
            (L{flannel_tw.model.leasecheck}).
        """

    def watch_leases(wait_index):
        """
        One long-poll for the next change under subnets/ at C{wait_index}.

        @return: Deferred firing with C{(event_or_None, modified_index)} where event is a
            L{LeaseEvent}; None means the node could not be parsed (step past it).
            Fails with L{flannel_tw.etcd.errors.EventIndexCleared} when the index is too old
            and with L{flannel_tw.etcd.errors.EtcdIndexWentBack} when the store's index is
            below C{wait_index - 1} (wiped or restored); both mean: list again.
        """

    def get_lease(subnet, ipv6_subnet=None):
        """@return: Deferred firing with the L{Lease} under the key of C{subnet} (and
            C{ipv6_subnet}) or failing with KeyNotFound."""

    def skipped_counts():
        """
        @return: a mapping reason -> nodes skipped as bad (C{bad-key}, C{bad-value}; the
            fixed label set L{flannel_tw.model.leasecheck.REASONS}), a snapshot.
        """


class IRegistry(Interface):
    """
    The raw store under flannel's prefix (etcd v2: L{flannel_tw.etcd.registry}; etcd v3:
    L{flannel_tw.etcd.registry_v3}, which maps index to revision), under L{flannel_tw.lease.manager.SubnetManager}'s policy. A lease is named
    by its key's last component (C{10.5.1.0-24}); values are texts, returned as stored.
    Records and changes are L{flannel_tw.etcd.registry.Record} and C{Change}.

    What every registry must guarantee (the policy relies on it):
      - one index per store, growing with every write; each record carries the index of
        its last write (C{modified_index}), and a list carries the cursor it was read at;
      - create-only, compare-and-set and delete are atomic against any other writer;
      - errors are L{flannel_tw.etcd.errors}' types: C{KeyNotFound} (missing),
        C{NodeExist} (create-only lost), C{TestFailed} (condition failed),
        C{EventIndexCleared} (the cursor left the store's history),
        C{EtcdIndexWentBack} (the store's index is below the cursor: wiped or restored);
        anything else is a transport error, retried by the caller;
      - a Deferred cancelled mid-request fails with CancelledError and writes nothing
        more.
    """

    prefix = Attribute("The prefix the network lives under, e.g. /coreos.com/network.")

    def get_config():
        """@return: Deferred text of <prefix>/config; fails with C{KeyNotFound}."""

    def list():
        """
        @return: Deferred C{(records, cursor)}: every key directly under subnets/ (not
            directories, not deeper keys) and the store index they were read at; an
            empty list (at the store's index) when there is none.
        """

    def get(name):
        """@return: Deferred C{Record} of one lease key; fails with C{KeyNotFound}."""

    def create(name, value, ttl):
        """Create-only (C{ttl} None: no TTL). @return: Deferred C{Record} as written;
        fails with C{NodeExist}."""

    def compare_and_set(name, value, ttl, prev_index=None, prev_value=None):
        """Write only if the key's index is still C{prev_index} (or, given instead, its
        value is still C{prev_value}). @return: Deferred C{Record}; fails with
        C{TestFailed} or C{KeyNotFound}."""

    def set(name, value, ttl):
        """Unconditional write. @return: Deferred C{Record}."""

    def delete(name, prev_index=None):
        """
        Delete C{name}; with C{prev_index}, only if its index is still that
        (compare-and-delete).

        @return: Deferred firing with the index of the deletion; fails with
            C{KeyNotFound}, or C{TestFailed} when C{prev_index} no longer matches.
        """

    def watch(wait_index):
        """
        Wait for the next change directly under subnets/ at index C{wait_index} or later.
        (On v3 several changes can share one index, a multi-key txn's revision: called
        with that index + 1 right after handing one out, the registry hands out the rest
        first.)

        @return: Deferred C{Change}; fails with C{EventIndexCleared} or
            C{EtcdIndexWentBack} (then list again).
        """


class IBackend(Interface):
    """A data plane: udp, vxlan, host-gw or alloc."""

    name = Attribute("The backend type name, e.g. 'udp'.")
    mtu = Attribute("MTU to publish in subnet.env; valid after prepare().")

    def prepare(config):
        """
        Check the backend config and make what must exist before the lease (e.g. a vxlan device).

        @return: Deferred firing with the L{flannel_tw.model.lease.LeaseAttrs} for our lease.
        """

    def start(config, lease):
        """
        Configure the data plane for our own lease and start carrying packets.

        @return: Deferred firing when ready.
        """

    def handle_events(events):
        """
        Apply a batch of L{LeaseEvent}s about other hosts. Never raises.
        """

    def stop():
        """Stop the data path (sockets, readers). Kernel state and the lease stay. Deferred."""


# Optional parts of a backend: a backend declares each one it has (@implementer) and the
# daemon and the observers ask C{IX.providedBy(backend)}, never getattr.

class IReconcilingBackend(IBackend):
    """A backend that removes kernel entries of leases gone while the daemon was down."""

    def reconcile(leases):
        """
        Called once with the leases of the watcher's first complete list (before they
        become events): remove what the backend installed for any other subnet.
        """


class IReconfiguringBackend(IBackend):
    """A backend that follows a change of our own subnet without a restart."""

    def reconfigure(config, lease):
        """Our lease now has another subnet: re-point the data plane. Deferred or None."""


class IRoutesBackend(IBackend):
    """A backend with a route table of its own (peers' subnets -> their public IPs)."""

    routes = Attribute("The route table; len() is the number of peers routed.")


class ICountingBackend(IBackend):
    """A backend that counts what its data path does (packets, bytes, drops by reason)."""

    counters = Attribute("A dict of counter name -> int, live (read at scrape time).")


class ITun(Interface):
    """A TUN device opened without packet info (IFF_TUN|IFF_NO_PI)."""

    name = Attribute("Device name, e.g. 'flannel0'.")
    vnet_hdr = Attribute("True when opened with IFF_VNET_HDR: every packet read or "
                         "written starts with a 10-byte virtio_net_hdr.")
    closed = Attribute("True once close() was called.")

    def fileno():
        """The non-blocking file descriptor."""

    def read():
        """Read one packet (bytes); raises BlockingIOError when none is ready."""

    def readinto(buf):
        """Read one packet into the writable C{buf}; return its length. Raises
        BlockingIOError when none is ready."""

    def write(packet):
        """Write one packet."""

    def close():
        """Close the file descriptor."""


class IDatagramRunReceiver(Interface):
    """
    A datagram protocol fed by L{flannel_tw.backend.udp.port.DrainingPort}: the port
    reads straight into the protocol's buffer and says what it read.
    """

    def receiveBuffer():
        """The writable buffer (a memoryview) the port reads each datagram into."""

    def runReceived(n, seg, addr):
        """
        C{n} bytes were read into the buffer from C{addr}: one datagram when C{seg} is
        0 or C{seg >= n}, else datagrams of C{seg} bytes coalesced by UDP_GRO (the last
        may be shorter). Never raises.
        """

    def truncatedReceived(n, addr):
        """A datagram from C{addr} was longer than the buffer (C{n} bytes kept)."""

    def datagramReceived(datagram, addr):
        """One datagram as bytes (L{twisted.internet.protocol.DatagramProtocol})."""


# -- the kernel seam ------------------------------------------------------------------
# Every method blocks (netlink round trips): backends run them with deferToThread, one
# call at a time per kernel object.

class IKernel(Interface):
    """
    The batch engine the routed backends (vxlan, host-gw) use
    (L{flannel_tw.kernel.batch.Kernel}): raw dumps and the removal of leftovers.
    """

    def routes(network):
        """
        @return: the main-table routes to subnets strictly inside C{network}, as
            L{flannel_tw.kernel.rtnetlink.RouteEntry} (one dump).
        """

    def remove_stale(network, keep_subnets, vxlan_index, ext_index, keep_macs=()):
        """
        Remove routes (and with C{vxlan_index}, neighbours and FDB entries) an earlier run
        left for leases that no longer exist.

        @return: a description of each entry removed.
        """


class IHostGwKernel(IKernel):
    """L{IKernel} plus host-gw routes (L{flannel_tw.backend.hostgw.HostGwKernel})."""

    def apply_hostgw(oif, changes):
        """
        C{changes}: C{(have, target)} pairs of L{flannel_tw.backend.hostgw.HostGwRoute} or
        None: delete C{have}, then C{route replace <target> dev <oif>}.

        @return: per change, in order, the route installed (None when only removing) or
            the exception that failed it; one entry's failure never touches another.
        """


class IVxlanKernel(IKernel):
    """L{IKernel} plus the vxlan device and peers (L{flannel_tw.backend.vxlan.device})."""

    def ensure_vxlan(spec):
        """
        Make (or reuse a compatible) C{flannel.<VNI>} for a
        L{flannel_tw.backend.vxlan.device.VxlanSpec}.

        @return: C{(index, mac, what)}; raises L{flannel_tw.kernel.batch.KernelError}.
        """

    def configure_vxlan(index, address):
        """Give the device exactly C{address/32} (IPv6: C{/128}, other non-link-local
        IPv6 addresses removed) and bring it up."""

    def apply_vxlan_peers(index, ext_index, changes, direct_routing=False, index6=None):
        """
        C{changes}: C{(have, target)} pairs of L{flannel_tw.backend.vxlan.device.VxlanPeer}
        or None: remove C{have}'s entries, install C{target}'s (a failed step undoes that
        peer's earlier steps only). Peers with an IPv6 subnet go on C{index6} (the
        C{flannel-v6.<VNI>} device), the others on C{index}.

        @return: per change, in order, the peer installed (C{direct} set), None, or the
            exception that failed it.
        """


class INetlink(Interface):
    """The udp backend's TUN configuration (L{flannel_tw.kernel.netlink}, a module)."""

    def configure_tun(ifname, address, mtu, route, gso_max_size=None, address6=None,
                      route6=None):
        """
        Give the TUN device C{address} (only), C{mtu}, up, and the route C{route dev
        ifname}; with C{gso_max_size}, the device's largest GSO packet; with
        C{address6} (IPv6Interface) and C{route6} (IPv6Network), IPv6 on the device, that
        address (the only non-link-local one) and the route.
        """


class IWireguardDevice(Interface):
    """
    One WireGuard device in the daemon's network namespace: the kernel module's (generic
    netlink) or wireguard-go's (UAPI socket). Made by
    L{flannel_tw.backend.wireguard.device.open_device}; every method returns a Deferred.
    Addresses, MTU and routes are not its business (the backend sets them with netlink).
    """

    name = Attribute("The interface name, e.g. 'flannel-wg'.")
    kind = Attribute("'kernel' or 'userspace' (wireguard-go).")

    def configure(private_key, listen_port):
        """Set the private key (32 raw bytes) and the UDP listen port; bring the link up."""

    def set_peers(upserts, removals):
        """
        Add or update each L{flannel_tw.model.wgpeer.WgPeer} in C{upserts} (its AllowedIPs
        replace the old ones) and remove each public key (32 raw bytes) in C{removals},
        in one exchange with the device.
        """

    def peers():
        """@return: Deferred firing with a dict public key (raw) -> L{WgPeer} as the device has them."""

    def close():
        """Remove the device (kernel) or stop wireguard-go; idempotent."""
