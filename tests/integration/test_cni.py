"""flannel_tw.tools.cni: delegate config generation, environment checks and error JSON
(unit, with a fake delegate), and containers attached through the real plugin
(bridge + host-local from containernetworking-plugins) on two udp lab hosts
reaching each other."""

import io
import json
import os
import stat
import subprocess

from hypothesis import example, given, strategies as st
from twisted.trial import unittest

from flannel_tw.tools import cni
from flannel_tw.testing.cni_fixtures import SUBNET_ENV, _write
from flannel_tw.testing.fuzz_fixtures import fuzz, json_values


class BadInputTests(unittest.TestCase):
    """
    Every field of the config, the environment and the delegate's answer is checked at
    the boundary: bad input gets the spec's error JSON (code, msg; exit 1), never a
    traceback.
    """

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x",
                    "CNI_IFNAME": "eth0", "CNI_PATH": self.dir}
        self.subnet_env = _write(os.path.join(self.dir, "subnet.env"), SUBNET_ENV)
        self.data = os.path.join(self.dir, "data")
        self.conf = {"cniVersion": "1.0.0", "name": "n", "type": "flannel",
                     "subnetFile": self.subnet_env, "dataDir": self.data}
        _write(os.path.join(self.dir, "bridge"), "#!/bin/sh\nexit 0\n", 0o755)

    def answer(self, stdout, code=0):
        def runner(argv, input=None, env=None, stdout_=None, **kw):
            return subprocess.CompletedProcess(argv, code, stdout, b"")
        return runner

    def run_cni(self, conf=None, env=None, raw=None, runner=None):
        data = raw if raw is not None else json.dumps(conf).encode()
        return cni.run(dict(self.env, **(env or {})), data,
                       runner=runner or self.answer(b'{"cniVersion": "1.0.0", "ips": []}'))

    def assertError(self, result, code):
        status, body = result
        self.assertEqual(status, 1, body)
        self.assertIsInstance(body, dict)
        self.assertEqual(set(body) - {"details"}, {"cniVersion", "code", "msg"}, body)
        self.assertEqual(body["code"], code, body)
        self.assertIsInstance(body["msg"], str)
        self.assertIsInstance(body.get("details", ""), str)
        self.assertIsInstance(body["cniVersion"], str)
        return body

    def check_env(self):
        os.makedirs(self.data)
        _write(os.path.join(self.data, "c1"), '{"type": "bridge", "name": "n"}')
        return {"CNI_COMMAND": "CHECK"}

    def test_prev_result_of_the_wrong_shape(self):
        env = self.check_env()
        for prev in ("a string", 5, [], {"ips": 5}, {"ips": "10.1.74.2/24"}, {"ips": ["x"]},
                     {"ips": [{"address": 5}]}, {"ips": [{"address": None}]},
                     {"ips": [{"address": "not an address"}]}):
            body = self.assertError(self.run_cni(dict(self.conf, prevResult=prev), env=env), 7)
            self.assertIn("prevResult", body["msg"])
        self.assertEqual(self.run_cni(dict(self.conf, prevResult=None), env=env), (0, None))

    def test_delegate_fields(self):
        for delegate in ({"type": 5}, {"type": ""}, {"type": None}, {"type": "../bridge"},
                         {"type": ["bridge"]}):
            body = self.assertError(self.run_cni(dict(self.conf, delegate=delegate)), 7)
            self.assertIn("delegate", body["msg"] + body.get("details", ""))

    def test_ipam_fields(self):
        for ipam in ({"type": 5}, {"routes": 5}, {"routes": "0.0.0.0/0"}, {"routes": [5]}):
            body = self.assertError(self.run_cni(dict(self.conf, ipam=ipam)), 7)
            self.assertIn("ipam", body["msg"] + body.get("details", ""))

    def test_top_level_fields(self):
        for key, value in (("cniVersion", 1), ("cniVersion", 0), ("cniVersion", False),
                           ("cniVersion", ["1.0.0"]), ("type", 5), ("name", ["n"]),
                           ("subnetFile", "a\0b"), ("dataDir", "a\0b"), ("dataDir", 5)):
            body = self.assertError(self.run_cni(dict(self.conf, **{key: value})), 7)
            self.assertIn(key, body["msg"] + body.get("details", ""))
        self.assertError(self.run_cni(raw=b"[" * 100000 + b"]" * 100000), 6)
        self.assertError(self.run_cni(raw=b'{"a":' * 100000 + b"1" + b"}" * 100000), 6)

    def test_delegate_error_with_a_bad_code(self):
        """The delegate's error answer is believed only when it is well-formed."""
        for answer in (b'{"code": "7", "msg": "m"}', b'{"code": 7.5, "msg": "m"}',
                       b'{"code": true, "msg": "m"}', b'{"code": null, "msg": "m"}',
                       b'{"code": [7], "msg": "m"}', b'{"code": 0, "msg": "m"}',
                       b'{"code": 99999999999999999999999, "msg": "m"}'):
            body = self.assertError(self.run_cni(self.conf, runner=self.answer(answer, 1)),
                                    100)
            self.assertIn(answer.decode(), body["details"])
        body = self.assertError(
            self.run_cni(self.conf, runner=self.answer(b'{"code": 7, "msg": 5, '
                                                       b'"details": {"a": 1}}', 1)), 7)
        self.assertEqual((body["msg"], body["details"]), ("failed to delegate add: 5",
                                                          '{"a": 1}'))

    def test_delegate_result_that_is_not_an_object(self):
        for answer in (b"[]", b"5", b'"x"', b"null", b"{nope"):
            self.assertError(self.run_cni(self.conf, runner=self.answer(answer)), 100)

    def test_saved_config_that_is_not_an_object(self):
        os.makedirs(self.data)
        _write(os.path.join(self.data, "c1"), "[1, 2]")
        self.assertError(self.run_cni(self.conf, env={"CNI_COMMAND": "DEL"}), 5)

    def test_saved_config_write_does_not_follow_links(self):
        """The delegate config is saved like subnet.env: a link planted at the old fixed
        temp name is not written through."""
        target = _write(os.path.abspath(self.mktemp()), "precious", 0o644)
        os.makedirs(self.data)
        os.symlink(target, os.path.join(self.data, "c1.tmp"))
        self.assertEqual(self.run_cni(self.conf)[0], 0)
        with open(target) as f:
            self.assertEqual(f.read(), "precious")
        saved = os.path.join(self.data, "c1")
        self.assertEqual(stat.S_IMODE(os.lstat(saved).st_mode), 0o600)
        with open(saved) as f:
            self.assertEqual(json.load(f)["type"], "bridge")

    def test_container_id_follows_the_spec(self):
        """Alphanumeric first, then alphanumerics and ._- only; no newline anywhere."""
        for cid in ("c1\n", "c1\nx", "\nc1", "c1\r", "c 1", "-c1", ".c1", "c/1", "c1\0",
                    "\u00e9t\u00e9", "c1\u0660"):
            body = self.assertError(self.run_cni(self.conf, env={"CNI_CONTAINERID": cid}), 4)
            self.assertIn("containerID", body["msg"])
        for cid in ("c1", "C1.a_b-c", "0" * 64):
            self.assertEqual(self.run_cni(self.conf, env={"CNI_CONTAINERID": cid})[0], 0, cid)

    def test_main_never_prints_a_traceback(self):
        """The process boundary: even an unexpected exception is a CNI error (100)."""
        def broken(*a, **kw):
            raise RuntimeError("boom")
        self.patch(cni, "run", broken)
        out, err = io.StringIO(), io.StringIO()
        code = cni.main([], environ=self.env, stdin=io.BytesIO(b"{}"), stdout=out, stderr=err)
        self.assertEqual(code, 1)
        body = json.loads(out.getvalue())
        self.assertEqual((body["code"], body["cniVersion"]), (100, cni.CURRENT_VERSION))
        self.assertIn("boom", body["details"])


versions = st.sampled_from(list(cni.SUPPORTED_VERSIONS) + ["", "9.9.9", "1.0", "0.4.0.0"])
field_values = json_values | versions
addresses = st.sampled_from(["10.1.74.2/24", "10.1.75.2/24", "fd00::1/64", "10.1.74.2",
                             "x", ""]) | json_values
prev_results = st.none() | json_values | st.fixed_dictionaries(
    {}, optional={"cniVersion": field_values,
                  "ips": st.lists(st.fixed_dictionaries({}, optional={"address": addresses})
                                  | json_values, max_size=3) | json_values})
delegates = st.fixed_dictionaries(
    {}, optional={"type": st.sampled_from(["bridge", "missing", "", "../bridge"]) | json_values,
                  "mtu": field_values, "ipMasq": field_values, "name": field_values}) \
    | json_values
ipams = st.fixed_dictionaries(
    {}, optional={"type": st.sampled_from(["host-local"]) | json_values,
                  "routes": st.lists(st.fixed_dictionaries({}, optional={"dst": field_values})
                                     | json_values, max_size=2) | json_values}) | json_values
# the delegate's stdout and exit status
answers = st.tuples(
    st.one_of(
        st.builds(lambda v: json.dumps(v).encode(), json_values),
        st.builds(lambda c, m, d: json.dumps({"cniVersion": "1.0.0", "code": c, "msg": m,
                                              "details": d}).encode(),
                  json_values | st.integers(0, 200), field_values, field_values),
        st.just(b'{"cniVersion": "1.0.0", "ips": [{"address": "10.1.74.2/24"}]}'),
        st.binary(max_size=20)),
    st.sampled_from([0, 1, 2]))


class FuzzTests(unittest.TestCase):
    """
    hypothesis over the stdin config (arbitrary JSON shapes, and configs whose known
    fields hold arbitrary values), the command and the delegate's answer: the plugin
    never raises, and answers either a result (ADD: a JSON object; DEL, CHECK: nothing)
    with status 0 or the spec's error JSON with status 1.
    """

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.subnet_env = _write(os.path.join(self.dir, "subnet.env"), SUBNET_ENV)
        self.data = os.path.join(self.dir, "data")
        _write(os.path.join(self.dir, "bridge"), "#!/bin/sh\nexit 0\n", 0o755)
        # the paths a config may name: ours, missing, a directory, odd strings
        self.paths = st.sampled_from([self.subnet_env, self.data, self.dir, "",
                                      os.path.join(self.dir, "missing", "x"), "a\0b",
                                      "/dev/null"]) | json_values.filter(
                                          lambda v: not isinstance(v, str))

    def invoke(self, command, data, answer):
        stdout, status = answer
        calls = []

        def runner(argv, input=None, env=None, **kw):
            calls.append(argv)
            return subprocess.CompletedProcess(argv, status, stdout, b"")
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x",
               "CNI_IFNAME": "eth0", "CNI_PATH": self.dir}
        code, output = cni.run(env, data, runner=runner)
        json.dumps(output)          # printable
        if code == 0:
            if command == "VERSION":
                self.assertEqual(output, cni.version_info())
            elif command == "ADD":
                self.assertIsInstance(output, dict)     # the delegate's result, passed on
            else:
                self.assertIsNone(output)
        else:
            self.assertEqual(code, 1)
            self.assertIsInstance(output, dict)
            self.assertLessEqual({"cniVersion", "code", "msg"}, set(output))
            self.assertLessEqual(set(output), {"cniVersion", "code", "msg", "details"})
            self.assertIsInstance(output["cniVersion"], str)
            self.assertIs(type(output["code"]), int)
            self.assertGreater(output["code"], 0)
            self.assertIsInstance(output["msg"], str)
            self.assertIsInstance(output.get("details", ""), str)

    @fuzz(300)
    @given(st.sampled_from(["ADD", "DEL", "CHECK"]), json_values, answers)
    @example("ADD", {"cniVersion": "1.0.0", "prevResult": "x"}, (b"{}", 0))
    def test_any_json_shape(self, command, value, answer):
        if isinstance(value, dict):
            # never let a random config name a real path on this machine
            value = {k: v for k, v in value.items() if k not in ("subnetFile", "dataDir")}
            value.update(subnetFile=self.subnet_env, dataDir=self.data)
        self.invoke(command, json.dumps(value).encode(), answer)

    @fuzz(400)
    @given(st.data())
    def test_known_fields_with_any_value(self, data):
        command = data.draw(st.sampled_from(["ADD", "DEL", "CHECK"]))
        conf = data.draw(st.fixed_dictionaries(
            {}, optional={"cniVersion": field_values, "name": field_values,
                          "type": field_values, "delegate": delegates, "ipam": ipams,
                          "runtimeConfig": json_values, "prevResult": prev_results}))
        conf["subnetFile"] = data.draw(self.paths)
        conf["dataDir"] = data.draw(self.paths.filter(
            lambda p: p not in (self.subnet_env, "/dev/null")))
        if data.draw(st.booleans()):           # a saved config for DEL and CHECK
            os.makedirs(self.data, exist_ok=True)
            saved = data.draw(st.just({"type": "bridge", "name": "n"}) | json_values)
            _write(os.path.join(self.data, "c1"), json.dumps(saved))
        self.invoke(command, json.dumps(conf).encode(), data.draw(answers))

    @fuzz(200)
    @given(st.sampled_from(["ADD", "DEL", "CHECK", "VERSION"]), st.binary(max_size=64))
    def test_any_bytes(self, command, raw):
        self.invoke(command, raw, (b"{}", 0))
