"""
The registry seam: EtcdV2Registry sends flanneld v0.10's exact requests (over StubTreq),
FakeRegistry behaves like etcd's indexes, and the lease policy (SubnetManager) runs on
the fake without etcd.
"""
import json
import random
from urllib.parse import quote
from ipaddress import IPv4Address, IPv4Network

from treq.testing import StubTreq
from twisted.internet import task
from twisted.trial import unittest
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from flannel_tw.etcd.client import EtcdV2Client
from flannel_tw.etcd.errors import (EtcdIndexWentBack, EventIndexCleared, KeyNotFound,
                                    NodeExist, TestFailed)
from flannel_tw.etcd.registry import Change, EtcdV2Registry, Record, v2_value
from flannel_tw.interfaces import IRegistry, ISubnetManager
from flannel_tw.lease.manager import SUBNET_TTL, SubnetManager
from flannel_tw.model.config import parse_config
from flannel_tw.model.events import ADDED, REMOVED
from flannel_tw.model.lease import LeaseAttrs
from flannel_tw.testing.registry import FakeRegistry

CONFIG_JSON = '{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}'
CONFIG = parse_config(CONFIG_JSON)
OURS = '{"PublicIP":"192.0.2.1"}'
ATTRS = LeaseAttrs(IPv4Address("192.0.2.1"))
NET = IPv4Network("10.5.7.0/24")


class Recorder(Resource):
    """Answers every request with one node; records (method, uri, form body)."""

    isLeaf = True

    def __init__(self, node, action="get", prev=None):
        super().__init__()
        self.node = node
        self.action = action
        self.prev = prev
        self.requests = []

    def render(self, request):
        self.requests.append((request.method.decode(), request.uri.decode(),
                              request.content.read().decode()))
        request.setHeader(b"x-etcd-index", b"40")
        answer = {"action": self.action, "node": self.node}
        if self.prev is not None:
            answer["prevNode"] = self.prev
        return json.dumps(answer).encode()


class InterfaceTests(unittest.TestCase):
    def test_etcd_v2_registry_provides_it(self):
        client = EtcdV2Client(task.Clock(), ["http://127.0.0.1:2379"])
        self.addCleanup(client.close)
        verifyObject(IRegistry, EtcdV2Registry(client))

    def test_fake_registry_provides_it(self):
        verifyObject(IRegistry, FakeRegistry())

    def test_subnet_manager_on_the_fake_provides_the_manager_interface(self):
        verifyObject(ISubnetManager, SubnetManager(FakeRegistry()))

    def test_manager_refuses_what_is_not_a_registry(self):
        self.assertRaises(TypeError, SubnetManager, object())


class EtcdV2RequestTests(unittest.TestCase):
    """The requests are flanneld v0.10's, byte for byte."""

    def registry(self, node, action="get", prev=None):
        self.etcd = Recorder(node, action, prev)
        client = EtcdV2Client(task.Clock(), ["http://127.0.0.1:2379"],
                              http=StubTreq(self.etcd))
        return EtcdV2Registry(client, prefix="/coreos.com/network/")

    def lease_node(self, **kw):
        node = {"key": "/coreos.com/network/subnets/10.5.7.0-24", "value": OURS, "ttl": 600,
                "modifiedIndex": 33}
        node.update(kw)
        return node

    def test_get_config(self):
        r = self.registry({"key": "/coreos.com/network/config", "value": CONFIG_JSON})
        self.assertEqual(self.successResultOf(r.get_config()), CONFIG_JSON)
        self.assertEqual(self.etcd.requests, [(
            "GET", "/v2/keys/coreos.com/network/config?quorum=true&recursive=false&sorted=false",
            "")])

    def test_list_keeps_direct_children_only_at_the_header_index(self):
        r = self.registry({"key": "/coreos.com/network/subnets", "dir": True, "nodes": [
            self.lease_node(), {"key": "/coreos.com/network/subnets/d", "dir": True},
            {"key": "/coreos.com/network/subnets/a/b", "value": "x", "modifiedIndex": 3}]})
        records, index = self.successResultOf(r.list())
        self.assertEqual((records, index), (
            [Record("/coreos.com/network/subnets/10.5.7.0-24", OURS, 600, 33)], 40))
        self.assertEqual(self.etcd.requests, [(
            "GET", "/v2/keys/coreos.com/network/subnets?quorum=true&recursive=true"
            "&sorted=false", "")])

    def test_writes(self):
        r = self.registry(self.lease_node(), action="set")
        record = Record("/coreos.com/network/subnets/10.5.7.0-24", OURS, 600, 33)
        self.assertEqual(self.successResultOf(r.create("10.5.7.0-24", OURS, 86400)), record)
        self.successResultOf(r.compare_and_set("10.5.7.0-24", OURS, 86400, prev_index=32))
        self.successResultOf(r.compare_and_set("10.5.7.0-24", OURS, None, prev_value=OURS))
        self.successResultOf(r.set("10.5.7.0-24", OURS, 86400))
        self.successResultOf(r.delete("10.5.7.0-24"))
        self.successResultOf(r.get("10.5.7.0-24"))
        key = "/v2/keys/coreos.com/network/subnets/10.5.7.0-24"
        value = "value=%7B%22PublicIP%22%3A%22192.0.2.1%22%7D"
        self.assertEqual(self.etcd.requests, [
            ("PUT", key + "?prevExist=false", "ttl=86400&" + value),
            ("PUT", key + "?prevIndex=32", "ttl=86400&" + value),
            ("PUT", key + "?prevValue=%7B%22PublicIP%22%3A%22192.0.2.1%22%7D", value),
            ("PUT", key, "ttl=86400&" + value),
            ("DELETE", key, ""),
            ("GET", key + "?quorum=true&recursive=false&sorted=false", ""),
        ])

    def test_vxlan_value_takes_v0_10_form(self):
        """The vxlan backend's v0.20 BackendData loses its VNI in v2 (v0.10's form)."""
        r = self.registry(self.lease_node(), action="set")
        v020 = ('{"PublicIP":"192.0.2.1","BackendType":"vxlan",'
                '"BackendData":{"VNI":1,"VtepMAC":"82:4b:b6:2f:54:4e"}}')
        self.successResultOf(r.create("10.5.7.0-24", v020, 86400))
        self.successResultOf(r.compare_and_set("10.5.7.0-24", v020, 86400, prev_index=3))
        self.successResultOf(r.set("10.5.7.0-24", v020, 86400))
        value = ("value=" + quote('{"PublicIP":"192.0.2.1","BackendType":"vxlan",'
                                  '"BackendData":{"VtepMAC":"82:4b:b6:2f:54:4e"}}', safe=""))
        self.assertEqual([body for _, _, body in self.etcd.requests], ["ttl=86400&" + value] * 3)

    def test_other_values_are_written_as_given(self):
        for text in ('{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VNI":1}}',
                     '{"PublicIP":"192.0.2.1","PublicIPv6":"fd00::1","BackendType":"vxlan",'
                     '"BackendData":{"VNI":1,"VtepMAC":"82:4b:b6:2f:54:4e"}}',
                     '{"PublicIP":"192.0.2.1","BackendType":"host-gw"}'):
            self.assertEqual(v2_value(text), text)

    def test_watch_removal_carries_the_previous_value(self):
        r = self.registry(self.lease_node(value=None, ttl=None), action="expire",
                          prev=self.lease_node(modifiedIndex=20))
        change = self.successResultOf(r.watch(34))
        self.assertEqual(change, Change(True, Record(
            "/coreos.com/network/subnets/10.5.7.0-24", None, None, 33), OURS))
        self.assertEqual(self.etcd.requests[0][:2], (
            "GET", "/v2/keys/coreos.com/network/subnets?recursive=true&wait=true&waitIndex=34"))


class FakeRegistryTests(unittest.TestCase):
    """The fake keeps etcd's index rules, which the policy relies on."""

    def test_indexes_and_conditions(self):
        r = FakeRegistry()
        a = self.successResultOf(r.create("10.5.1.0-24", OURS, 60))
        self.failureResultOf(r.create("10.5.1.0-24", OURS, 60), NodeExist)
        self.failureResultOf(r.compare_and_set("10.5.1.0-24", OURS, 60,
                                               prev_index=a.modified_index - 1), TestFailed)
        b = self.successResultOf(r.compare_and_set("10.5.1.0-24", OURS, 60,
                                                   prev_index=a.modified_index))
        self.assertGreater(b.modified_index, a.modified_index)
        self.assertEqual(self.successResultOf(r.list()), ([b], b.modified_index))
        self.failureResultOf(r.get("10.5.2.0-24"), KeyNotFound)

    def test_watch_waits_answers_from_history_and_detects_wipes(self):
        r = FakeRegistry(history=2)
        d = r.watch(r.index + 1)
        self.assertNoResult(d)
        rec = r.put_raw("10.5.1.0-24", OURS)
        self.assertEqual(self.successResultOf(d), Change(False, rec))
        r.put_raw("10.5.2.0-24", OURS)
        r.put_raw("10.5.3.0-24", OURS)
        self.failureResultOf(r.watch(rec.modified_index), EventIndexCleared)
        pending = r.watch(r.index + 1)
        r.wipe()
        self.failureResultOf(pending, EtcdIndexWentBack)


class PolicyOnFakeRegistryTests(unittest.TestCase):
    """SubnetManager: the same policy on any registry."""

    def setUp(self):
        self.registry = FakeRegistry(config=CONFIG_JSON)
        self.manager = SubnetManager(self.registry, rand=random.Random(1))

    def test_config(self):
        self.assertEqual(self.successResultOf(self.manager.get_network_config()), CONFIG)

    def test_new_lease_is_created_only_if_absent(self):
        lease = self.successResultOf(self.manager.acquire_lease(CONFIG, ATTRS))
        op, name, value, ttl, _ = self.registry.writes[-1]
        self.assertEqual((op, ttl, json.loads(value)), ("create", SUBNET_TTL,
                                                        {"PublicIP": "192.0.2.1"}))
        self.assertEqual(lease.modified_index, self.registry.index)

    def test_reuse_by_public_ip_is_a_compare_and_swap_on_the_listed_index(self):
        old = self.registry.put_raw("10.5.7.0-24", OURS, ttl=100)
        lease = self.successResultOf(self.manager.acquire_lease(CONFIG, ATTRS))
        self.assertEqual(lease.subnet, NET)
        self.assertEqual(self.registry.writes[-1][0::4],
                         ("compare_and_set", old.modified_index))
        self.assertEqual(self.manager.reused_leases, {NET: lease.modified_index})

    def test_renewal_never_overwrites_another_write(self):
        lease = self.successResultOf(self.manager.acquire_lease(CONFIG, ATTRS,
                                                                previous_subnet=NET))
        self.assertEqual(lease.subnet, NET)
        renewed = self.successResultOf(self.manager.renew_lease(lease))
        self.assertGreater(renewed.modified_index, lease.modified_index)
        self.registry.put_raw("10.5.7.0-24", '{"PublicIP":"192.0.2.9"}', ttl=100)
        self.failureResultOf(self.manager.renew_lease(renewed), TestFailed)
        self.assertEqual(self.successResultOf(self.manager.get_lease(NET)).attrs.public_ip,
                         IPv4Address("192.0.2.9"))

    def test_watch_events_and_bad_nodes(self):
        cursor = self.registry.index
        self.registry.put_raw("10.5.7.0-24", "not json")
        self.registry.put_raw("10.5.7.0-24", OURS, ttl=100)
        self.registry.remove("10.5.7.0-24")
        event, index = self.successResultOf(self.manager.watch_leases(cursor + 1))
        self.assertIsNone(event)
        self.assertEqual(self.manager.skipped_counts()["bad-value"], 1)
        event, index = self.successResultOf(self.manager.watch_leases(index + 1))
        self.assertEqual((event.kind, event.lease.subnet, event.lease.ttl), (ADDED, NET, 100))
        event, index = self.successResultOf(self.manager.watch_leases(index + 1))
        self.assertEqual((event.kind, event.lease.attrs), (REMOVED, ATTRS))
        self.assertEqual(index, self.registry.index)

    def test_list_skips_bad_nodes_once(self):
        self.registry.put_raw("10.5.7.0-24", OURS)
        self.registry.put_raw("nonsense", OURS)
        leases, index = self.successResultOf(self.manager.list_leases())
        self.assertEqual([l.subnet for l in leases], [NET])
        self.assertEqual(self.manager.skipped_counts()["bad-key"], 1)


class KeeperOnFakeRegistryTests(unittest.TestCase):
    """The keeper and the policy on the in-memory registry: every answer is synchronous,
    so each input the keeper fires from inside an output is queued, never re-entered."""

    def setUp(self):
        from flannel_tw.lease.keeper import LeaseKeeper
        self.clock = task.Clock()
        self.registry = FakeRegistry(config=CONFIG_JSON)
        self.manager = SubnetManager(self.registry, rand=random.Random(1))
        lease = self.successResultOf(self.manager.acquire_lease(CONFIG, ATTRS,
                                                                previous_subnet=NET))
        self.changes = []
        self.keeper = LeaseKeeper(self.clock, self.manager, CONFIG, ATTRS, lease, 3600,
                                  on_new_lease=lambda new, old: self.changes.append(
                                      (new.subnet, old.subnet)))
        self.keeper.start()

    def test_renewals_are_compare_and_swaps_on_our_last_write(self):
        for _ in range(3):
            before = self.keeper.lease.modified_index
            self.clock.advance(82800)
            self.assertEqual(self.registry.writes[-1][0::4], ("compare_and_set", before))
            self.assertEqual(self.keeper.state, "held")
        self.assertEqual(self.keeper.renewals, 3)

    def test_wiped_store_is_reacquired_with_the_same_subnet(self):
        self.registry.wipe(index=5)
        self.clock.advance(82800)     # the renewal finds no key: re-acquire, same subnet
        self.assertEqual(self.keeper.state, "held")
        self.assertEqual(self.keeper.lease.subnet, NET)
        self.assertEqual(self.changes, [(NET, NET)])
        self.assertEqual(self.registry.records["10.5.7.0-24"].modified_index,
                         self.keeper.lease.modified_index)

    def test_another_host_on_our_key_moves_us(self):
        self.registry.put_raw("10.5.7.0-24", '{"PublicIP":"192.0.2.9"}', ttl=86400)
        self.clock.advance(82800)     # CAS fails, the read shows another PublicIP
        self.assertEqual(self.keeper.state, "held")
        self.assertNotEqual(self.keeper.lease.subnet, NET)
        self.assertEqual(self.changes, [(self.keeper.lease.subnet, NET)])
        self.assertEqual(json.loads(self.registry.records["10.5.7.0-24"].value)["PublicIP"],
                         "192.0.2.9")
