"""What users install, not the checkout: the wheel and the sdist built from this tree,

The unit tests (ReadmeTests); the whole description is in tests/lab/test_install.py."""

import os

from twisted.trial import unittest

from flannel_tw.testing.install_fixtures import ROOT


class ReadmeTests(unittest.TestCase):
    """README.rst is the package's long description: it must render cleanly (PyPI
    refuses a description with reST errors) and show the commands it promises."""

    def test_renders_without_warnings(self):
        import io
        import docutils.core
        warnings = io.StringIO()
        with open(os.path.join(ROOT, "README.rst")) as f:
            docutils.core.publish_string(f.read(), writer_name="null", settings_overrides={
                "report_level": 2, "halt_level": 5, "warning_stream": warnings})
        self.assertEqual(warnings.getvalue(), "")

    def test_top_commands(self):
        with open(os.path.join(ROOT, "README.rst")) as f:
            top = f.read()[:2000]
        self.assertIn("bash .ci/setup && .venv/bin/flannel-tw lab --hosts 3", top)
        self.assertIn("bash .ci/run", top)
        with open(os.path.join(ROOT, ".ci", "run")) as f:
            self.assertIn(".venv/bin/python -m twisted.trial", f.read())
