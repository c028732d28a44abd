"""Test helpers (formerly in tests/test_systemd.py), shared by
tests/integration/test_systemd.py, tests/unit/test_systemd.py.
(No test module imports another: what several need lives here.)"""

import os
import shlex

from flannel_tw.tools.lab.run import repo_root


DIST = os.path.join(repo_root(), "flannel_tw", "deploy", "systemd")
EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop", "ExecStopPost",
             "ExecReload", "ExecCondition")


def parse_unit(text):
    """
    A unit file as {section: [(key, value), ...]}, keys in file order and repeated
    keys kept (systemd's ExecStart= resets are significant). Handles comments
    (# and ;), blank lines and backslash line continuations.
    """
    sections = {}
    current = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        if current is None:
            raise ValueError("assignment outside a section: %r" % line)
        if "=" not in line:
            raise ValueError("not KEY=VALUE: %r" % line)
        key, value = line.split("=", 1)
        sections[current].append((key.strip(), value.strip()))
    if pending:
        raise ValueError("continuation at end of file")
    return sections


def values(sections, section, key):
    return [v for k, v in sections.get(section, []) if k == key]


def read(*path):
    with open(os.path.join(DIST, *path)) as f:
        return f.read()


def load(*path):
    return parse_unit(read(*path))


def parse_env_file(text):
    """An EnvironmentFile= as systemd reads it: KEY=VALUE lines, # and ; comments,
    optional surrounding quotes."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def effective_environment(units, files):
    """
    The environment systemd gives a service, by systemd.exec(5): Environment=
    assignments in order (unit file, then drop-ins in name order; a later one wins),
    then the EnvironmentFile= files in the order listed, which "override settings
    made with Environment=" (a later file wins too). C{units} are parsed unit texts
    in load order; C{files} maps an EnvironmentFile path to its text (a missing file
    with a "-" prefix is skipped).
    """
    env, env_files = {}, []
    for u in units:
        for v in values(u, "Service", "Environment"):
            for assignment in shlex.split(v):
                key, value = assignment.split("=", 1)
                env[key] = value
        env_files.extend(values(u, "Service", "EnvironmentFile"))
    for path in env_files:
        optional = path.startswith("-")
        path = path.lstrip("-")
        if path not in files:
            if optional:
                continue
            raise FileNotFoundError(path)
        env.update(parse_env_file(files[path]))
    return env


def exec_argv(value):
    """An Exec*= value as argv, without systemd's prefixes (-, @, :, +, !)."""
    argv = shlex.split(value)
    argv[0] = argv[0].lstrip("-@:+!")
    return argv
