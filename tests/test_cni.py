"""
flannel_tw.cni: delegate config generation, environment checks and error JSON
(unit, with a fake delegate), and containers attached through the real plugin
(bridge + host-local from containernetworking-plugins) on two udp lab hosts
reaching each other.
"""
import io
import json
import os
import shutil
import stat
import subprocess
import sys

from hypothesis import HealthCheck, example, given, settings, strategies as st
from twisted.trial import unittest

from flannel_tw import cni

SUBNET_ENV = ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\n"
              "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")


def _write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


class ConfigTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.env_path = _write(os.path.join(self.dir, "subnet.env"), SUBNET_ENV)

    def conf(self, **extra):
        c = {"cniVersion": "1.0.0", "name": "flnet", "type": "flannel",
             "subnetFile": self.env_path}
        c.update(extra)
        return cni.parse_netconf(json.dumps(c))

    def test_default_delegate_is_flannels(self):
        conf = self.conf()
        d = cni.delegate_config(conf, cni.load_subnet_env(conf["subnetFile"]))
        self.assertEqual(d, {
            "name": "flnet", "type": "bridge", "cniVersion": "1.0.0",
            "ipMasq": True, "mtu": 1472, "isGateway": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.1.74.0/24"}]],
                     "routes": [{"dst": "10.1.0.0/16"}]}})

    def test_user_settings_are_kept(self):
        conf = self.conf(delegate={"type": "bridge", "ipMasq": False, "mtu": 1400,
                                   "isGateway": False, "bridge": "cni1"},
                         ipam={"dataDir": "/tmp/x", "routes": [{"dst": "0.0.0.0/0"}]},
                         runtimeConfig={"portMappings": []})
        d = cni.delegate_config(conf, cni.load_subnet_env(conf["subnetFile"]))
        self.assertEqual((d["ipMasq"], d["mtu"], d["isGateway"], d["bridge"]),
                         (False, 1400, False, "cni1"))
        self.assertEqual(d["ipam"]["dataDir"], "/tmp/x")
        self.assertEqual(d["ipam"]["routes"], [{"dst": "0.0.0.0/0"}, {"dst": "10.1.0.0/16"}])
        self.assertEqual(d["runtimeConfig"], {"portMappings": []})

    def test_flannel_ipmasq_turns_bridge_masquerade_off(self):
        _write(self.env_path, SUBNET_ENV.replace("IPMASQ=false", "IPMASQ=true"))
        conf = self.conf()
        self.assertFalse(cni.delegate_config(conf, cni.load_subnet_env(self.env_path))["ipMasq"])

    def test_non_bridge_delegate_gets_no_isgateway(self):
        conf = self.conf(delegate={"type": "ipvlan"})
        self.assertNotIn("isGateway", cni.delegate_config(conf, cni.load_subnet_env(self.env_path)))

    def test_ipv6_subnet(self):
        _write(self.env_path, SUBNET_ENV + "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n"
               "FLANNEL_IPV6_SUBNET=2001:cafe:42:1::1/64\n")
        ipam = cni.delegate_ipam({}, cni.load_subnet_env(self.env_path))
        self.assertEqual(ipam["ranges"], [[{"subnet": "10.1.74.0/24"}],
                                          [{"subnet": "2001:cafe:42:1::/64"}]])
        self.assertEqual(ipam["routes"], [{"dst": "10.1.0.0/16"}, {"dst": "2001:cafe:42::/56"}])

    def test_defaults(self):
        conf = cni.parse_netconf(b'{"cniVersion": "0.3.1", "name": "n"}')
        self.assertEqual(conf["subnetFile"], "/run/flannel/subnet.env")
        self.assertEqual(conf["dataDir"], "/var/lib/cni/flannel")
        self.assertEqual(conf["delegate"], {})


class ErrorTests(unittest.TestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x",
                    "CNI_IFNAME": "eth0", "CNI_PATH": self.dir}
        self.conf = {"cniVersion": "1.0.0", "name": "n", "type": "flannel",
                     "subnetFile": os.path.join(self.dir, "subnet.env"),
                     "dataDir": os.path.join(self.dir, "data")}

    def call(self, env=None, conf=None, raw=None):
        out = io.StringIO()
        stdin = io.BytesIO(raw if raw is not None else json.dumps(conf or self.conf).encode())
        code = cni.main([], environ=env or self.env, stdin=stdin, stdout=out,
                        stderr=io.StringIO())
        return code, json.loads(out.getvalue()) if out.getvalue() else None

    def assertError(self, result, code, version="1.0.0"):
        status, body = result
        self.assertEqual(status, 1)
        self.assertEqual(set(body) - {"details"}, {"cniVersion", "code", "msg"})
        self.assertEqual((body["code"], body["cniVersion"]), (code, version), body)
        return body

    def test_missing_subnet_env_is_try_again_later(self):
        body = self.assertError(self.call(), 11)
        self.assertIn("subnet.env", body["msg"])

    def test_bad_json(self):
        self.assertError(self.call(raw=b"{nope"), 6)
        self.assertError(self.call(raw=b"[1]"), 6)

    def test_unsupported_version(self):
        self.assertError(self.call(conf=dict(self.conf, cniVersion="9.9.9")), 1)

    def test_wrong_field_type(self):
        self.assertError(self.call(conf=dict(self.conf, delegate="bridge")), 7)

    def test_missing_and_bad_environment(self):
        for drop in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"):
            env = dict(self.env)
            del env[drop]
            body = self.assertError(self.call(env=env), 4)
            self.assertIn(drop, body["msg"])
        self.assertError(self.call(env=dict(self.env, CNI_COMMAND="FROB")), 4)
        self.assertError(self.call(env=dict(self.env, CNI_CONTAINERID="../../etc")), 4)
        self.assertError(self.call(env=dict(self.env, CNI_IFNAME="a" * 16)), 4)

    def test_version(self):
        code, body = self.call(env={"CNI_COMMAND": "VERSION"}, raw=b'{"cniVersion":"0.4.0"}')
        self.assertEqual(code, 0)
        self.assertEqual(body["cniVersion"], "1.0.0")
        self.assertIn("0.3.1", body["supportedVersions"])
        self.assertIn("1.0.0", body["supportedVersions"])

    def test_no_command_prints_about(self):
        err = io.StringIO()
        self.assertEqual(cni.main([], environ={}, stdin=io.BytesIO(), stdout=io.StringIO(),
                                  stderr=err), 0)
        self.assertIn("CNI flannel plugin", err.getvalue())

    def test_del_without_saved_config_succeeds(self):
        self.assertEqual(self.call(env=dict(self.env, CNI_COMMAND="DEL")), (0, None))

    def test_delegate_not_found(self):
        _write(self.conf["subnetFile"], SUBNET_ENV)
        body = self.assertError(self.call(), 100)
        self.assertIn("bridge", body["msg"])

    def fake_bridge(self, script):
        return _write(os.path.join(self.dir, "bridge"), "#!/bin/sh\n" + script, 0o755)

    def test_delegate_add_del_with_fake_plugin(self):
        """The delegate gets our environment, CNI_COMMAND and the config on stdin."""
        _write(self.conf["subnetFile"], SUBNET_ENV)
        log = os.path.join(self.dir, "calls")
        self.fake_bridge('echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME" >> %s\n'
                         'cat > %s.$CNI_COMMAND\n'
                         '[ "$CNI_COMMAND" = ADD ] && echo \'{"cniVersion":"1.0.0",'
                         '"ips":[{"address":"10.1.74.2/24"}]}\'\nexit 0\n' % (log, log))
        code, result = self.call()
        self.assertEqual(code, 0)
        self.assertEqual(result["ips"][0]["address"], "10.1.74.2/24")
        with open(log + ".ADD") as f:
            sent = json.load(f)
        self.assertEqual(sent["ipam"]["ranges"], [[{"subnet": "10.1.74.0/24"}]])
        saved = os.path.join(self.dir, "data", "c1")
        self.assertEqual(stat.S_IMODE(os.stat(saved).st_mode), 0o600)
        with open(saved) as f:
            self.assertEqual(json.load(f), sent)
        # DEL uses the saved config even when subnet.env is gone, then removes it
        os.unlink(self.conf["subnetFile"])
        self.assertEqual(self.call(env=dict(self.env, CNI_COMMAND="DEL")), (0, None))
        with open(log + ".DEL") as f:
            self.assertEqual(json.load(f), sent)
        self.assertFalse(os.path.exists(saved))
        with open(log) as f:
            self.assertEqual(f.read().split("\n")[:2], ["ADD c1 eth0", "DEL c1 eth0"])

    def test_delegate_error_is_passed_on(self):
        _write(self.conf["subnetFile"], SUBNET_ENV)
        self.fake_bridge('echo \'{"cniVersion":"1.0.0","code":7,"msg":"bad bridge",'
                         '"details":"d"}\'\nexit 1\n')
        body = self.assertError(self.call(), 7)
        self.assertEqual((body["msg"], body["details"]), ("failed to delegate add: bad bridge", "d"))

    def test_delegate_crash_without_cni_error(self):
        _write(self.conf["subnetFile"], SUBNET_ENV)
        self.fake_bridge("echo oops >&2\nexit 3\n")
        body = self.assertError(self.call(), 100)
        self.assertIn("oops", body["details"])

    def test_failed_del_keeps_the_saved_config(self):
        os.makedirs(self.conf["dataDir"])
        _write(os.path.join(self.conf["dataDir"], "c1"), '{"type": "bridge", "name": "n"}')
        self.fake_bridge("exit 1\n")
        self.assertError(self.call(env=dict(self.env, CNI_COMMAND="DEL")), 100)
        self.assertTrue(os.path.exists(os.path.join(self.conf["dataDir"], "c1")))

    def test_check(self):
        check = dict(self.env, CNI_COMMAND="CHECK")
        self.assertError(self.call(env=check), 3)
        self.assertError(self.call(env=check, conf=dict(self.conf, cniVersion="0.3.1")),
                         1, "0.3.1")
        os.makedirs(self.conf["dataDir"])
        _write(os.path.join(self.conf["dataDir"], "c1"), '{"type": "bridge", "name": "n"}')
        self.assertError(self.call(env=check), 11)      # no subnet.env
        _write(self.conf["subnetFile"], SUBNET_ENV)
        prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.74.2/24"}]}
        self.assertEqual(self.call(env=check, conf=dict(self.conf, prevResult=prev)), (0, None))
        # the lease moved: the container's address is stale
        _write(self.conf["subnetFile"], SUBNET_ENV.replace("10.1.74.1", "10.1.75.1"))
        body = self.assertError(self.call(env=check, conf=dict(self.conf, prevResult=prev)), 100)
        self.assertIn("10.1.74.2", body["msg"])


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


# -- fuzz -------------------------------------------------------------------------------

FUZZ_EXAMPLES = int(os.environ.get("FLANNEL_TW_FUZZ_EXAMPLES", "0") or 0)


def fuzz(examples):
    return settings(max_examples=FUZZ_EXAMPLES or examples, deadline=None,
                    derandomize=not FUZZ_EXAMPLES,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20)
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


def _plugin_dir():
    for d in PLUGIN_DIRS:
        if all(os.access(os.path.join(d, p), os.X_OK) for p in ("bridge", "host-local")):
            return d
    return None


class LabTests(unittest.TestCase):
    """Two udp hosts; a container namespace on each attached by the plugin; ping; DEL."""

    def setUp(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to create network namespaces")
        for tool in ("ip", "ping", "iptables"):
            if shutil.which(tool) is None:
                raise unittest.SkipTest("needs %s" % tool)
        self.plugins = _plugin_dir()
        if self.plugins is None:
            raise unittest.SkipTest("needs the bridge and host-local CNI plugins "
                                    "(Debian package containernetworking-plugins)")

    def make_cni_path(self, workdir):
        """A CNI_PATH dir holding the 'flannel' shim (flannel_tw/deploy/cni/flannel, or a copy
        running this interpreter's flannel-tw when the command is not installed)."""
        from flannel_tw.lab.run import repo_root
        d = os.path.join(workdir, "cni-bin")
        os.makedirs(d)
        shim = os.path.join(d, "flannel")
        from flannel_tw.install import InstallError, find_bin_dir, render, shipped
        try:   # the shipped shim, with this install's absolute path (as install-units writes it)
            bin_dir = find_bin_dir()
        except InstallError:
            bin_dir = None
        if bin_dir:
            _write(shim, render(shipped("cni", "flannel"), bin_dir))
        else:
            _write(shim, '#!/bin/sh\nexec %s -m flannel_tw.cli cni "$@"\n' % sys.executable)
        os.chmod(shim, 0o755)
        return d

    def plugin(self, lab, i, command, netns, workdir, cni_path, **extra):
        conf = {"cniVersion": "1.0.0", "name": "flannel-lab", "type": "flannel",
                "subnetFile": os.path.join(workdir, "h%d" % i, "subnet.env"),
                "dataDir": os.path.join(workdir, "cni-data-h%d" % i),
                "ipam": {"dataDir": os.path.join(workdir, "ipam-h%d" % i)}}
        conf.update(extra)
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "ctr%d" % i,
               "CNI_NETNS": "/var/run/netns/" + netns, "CNI_IFNAME": "eth0",
               "CNI_PATH": cni_path + os.pathsep + self.plugins}
        argv = ["env"] + ["%s=%s" % kv for kv in env.items()] + [
            os.path.join(cni_path, "flannel")]
        cp = lab.exec(lab.host_ns(i), argv, input=json.dumps(conf), check=False, timeout=60)
        return cp

    def veths(self, lab, i):
        out = lab.exec(lab.host_ns(i), ["ip", "-o", "link", "show", "type", "veth"]).stdout
        names = [l.split(":")[1].strip().split("@")[0] for l in out.splitlines() if l.strip()]
        # the host's own uplink is eth0; the bridge plugin's are veth<8 hex digits>,
        # which may well contain "eth0" (veth0a1b2c3d)
        return [n for n in names if n != "eth0"]

    def test_containers_on_two_hosts_reach_each_other(self):
        from flannel_tw.lab import run as labrun
        from flannel_tw.lab.topology import Lab
        lab = Lab()
        self.addCleanup(lab.teardown)
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        lab.add_switch()
        for i in (1, 2):
            lab.add_host(i)
        url = labrun.start_etcd(lab, workdir,
                                '{"Network": "10.44.0.0/16", "Backend": {"Type": "udp"}}')
        procs = labrun.start_daemons(lab, workdir, url, [1, 2])
        envs = labrun.wait_subnet_files(workdir, procs, timeout=60)
        cni_path = self.make_cni_path(workdir)

        addrs = {}
        for i in (1, 2):
            ns = lab.container_ns(i)
            # a bare container namespace; Lab.teardown removes every <prefix>h<i>c
            subprocess.run(["ip", "netns", "add", ns], check=True)
            cp = self.plugin(lab, i, "ADD", ns, workdir, cni_path)
            self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
            result = json.loads(cp.stdout)
            self.assertEqual(result["cniVersion"], "1.0.0")
            (ip,) = [x["address"] for x in result["ips"]]
            subnet = envs[i]["FLANNEL_SUBNET"]
            self.assertEqual(ip.split("/")[1], subnet.split("/")[1])
            self.assertEqual(ip.rsplit(".", 1)[0], subnet.rsplit(".", 1)[0])
            addrs[i] = ip.split("/")[0]
            mtu = lab.exec(ns, ["cat", "/sys/class/net/eth0/mtu"]).stdout.strip()
            self.assertEqual(mtu, envs[i]["FLANNEL_MTU"])
            self.assertTrue(os.path.exists(os.path.join(workdir, "cni-data-h%d" % i, "ctr%d" % i)))
            self.assertEqual(len(self.veths(lab, i)), 1)
            # CHECK with the ADD result as prevResult agrees
            cp = self.plugin(lab, i, "CHECK", ns, workdir, cni_path, prevResult=result)
            self.assertEqual((cp.returncode, cp.stdout), (0, ""), cp.stderr)

        ok = False
        for _ in range(20):
            if lab.ping(lab.container_ns(1), addrs[2]) and lab.ping(lab.container_ns(2), addrs[1]):
                ok = True
                break
        self.assertTrue(ok, "containers %s and %s cannot reach each other" % (addrs[1], addrs[2]))

        for i in (1, 2):
            cp = self.plugin(lab, i, "DEL", lab.container_ns(i), workdir, cni_path)
            self.assertEqual((cp.returncode, cp.stdout), (0, ""), cp.stderr)
            self.assertEqual(self.veths(lab, i), [])
            links = lab.exec(lab.container_ns(i), ["ip", "-o", "link"]).stdout
            self.assertNotIn("eth0", links)
            self.assertFalse(os.path.exists(os.path.join(workdir, "cni-data-h%d" % i,
                                                         "ctr%d" % i)))
            # DEL again: nothing left, still success
            cp = self.plugin(lab, i, "DEL", lab.container_ns(i), workdir, cni_path)
            self.assertEqual(cp.returncode, 0, cp.stdout)
