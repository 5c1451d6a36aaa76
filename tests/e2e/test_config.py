"""`lbd -t`: configuration checks, and FILE:LINE in every error."""
import os
import subprocess

from lbdtest import LbdTestCase

# A valid configuration, one setting per line, so each error has a line.
# "@@" marks the line a case replaces; the expected error line is that one.
BASE = """\
# lbd test configuration
workers = 2;
shutdown_timeout = "10s";
log_level = "info";
timeouts = {
    connect = "2s";
    backend_response = "5s";
};
listeners = (
    {
        address = "127.0.0.1:18080";
    }
);
pools = (
    {
        name = "web";
        strategy = "round_robin";
        servers = (
            { address = "127.0.0.1:19001"; weight = 1; },
            { address = "127.0.0.1:19002"; weight = 3; }
        );
    },
    {
        name = "api";
        servers = (
            { address = "127.0.0.1:19003"; }
        );
    }
);
routes = (
    {
        host = "*";
        path_prefix = "/";
        pool = "web";
    },
    {
        host = "api.example.com";
        pool = "api";
    }
);
"""


def replace_line(text, old, new):
    """Replace the one line containing OLD by NEW; return (text, line number)."""
    lines = text.split("\n")
    hits = [i for i, ln in enumerate(lines) if old in ln]
    assert len(hits) == 1, (old, hits)
    i = hits[0]
    lines[i] = new
    return "\n".join(lines), i + 1


def insert_after(text, anchor, new):
    lines = text.split("\n")
    hits = [i for i, ln in enumerate(lines) if anchor in ln]
    assert len(hits) == 1, (anchor, hits)
    lines.insert(hits[0] + 1, new)
    return "\n".join(lines), hits[0] + 2


class ConfigTestTest(LbdTestCase):

    def check(self, text, name="lbd.conf"):
        path = self.write_file(self.path(name), text)
        p = subprocess.run([self.lbd_bin, "-t", "-c", path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10)
        return p.returncode, p.stderr.decode("utf-8", "replace"), os.path.realpath(path)

    def assertInvalid(self, text, line, what=None):
        rc, err, path = self.check(text)
        self.assertEqual(rc, 1, f"expected failure, got {rc}; stderr:\n{err}")
        self.assertIn(f"{path}:{line}:", err, f"wrong or missing FILE:LINE in:\n{err}")
        if what:
            self.assertIn(what, err)
        self.assertNotIn("test is successful", err)

    def test_valid(self):
        rc, err, _ = self.check(BASE)
        self.assertEqual(rc, 0, err)
        self.assertIn("test is successful", err)

    def test_valid_example_config(self):
        """The shipped etc/lbd.conf is valid."""
        from lbdtest import ROOT
        p = subprocess.run([self.lbd_bin, "-t", "-c", os.path.join(ROOT, "etc", "lbd.conf")],
                           stderr=subprocess.PIPE, timeout=10)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"test is successful", p.stderr)

    def test_missing_file(self):
        p = subprocess.run([self.lbd_bin, "-t", "-c", self.path("nope.conf")],
                           stderr=subprocess.PIPE, timeout=10)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"nope.conf", p.stderr)

    def test_syntax_error(self):
        text, line = replace_line(BASE, 'log_level = "info";', 'log_level = = "info";')
        self.assertInvalid(text, line)

    def test_syntax_error_unterminated(self):
        text, line = replace_line(BASE, 'strategy = "round_robin";', 'strategy = "round_robin;')
        rc, err, path = self.check(text)
        self.assertEqual(rc, 1, err)
        self.assertRegex(err, rf"{path}:\d+:")

    def test_unknown_top_level_key(self):
        text, line = insert_after(BASE, 'log_level = "info";', "frobnicate = 1;")
        self.assertInvalid(text, line, "frobnicate")

    def test_unknown_nested_key(self):
        text, line = insert_after(BASE, 'path_prefix = "/";', '        path_prefx = "/x";')
        self.assertInvalid(text, line, "path_prefx")

    def test_unknown_server_key(self):
        text, line = replace_line(BASE, '{ address = "127.0.0.1:19003"; }',
                                  '            { address = "127.0.0.1:19003"; wieght = 2; }')
        self.assertInvalid(text, line, "wieght")

    def test_last_list_element_line(self):
        """libconfig stamps the last element of a list with the line of the
        closing bracket (here past a comment): the error names the element's
        own line."""
        text, line = insert_after(BASE, 'log_level = "info";',
                                  'trusted_proxies = [\n    "10.0.0.0/8",\n    "nonsense"\n'
                                  '    # a comment\n];')
        self.assertInvalid(text, line + 2, "trusted_proxies")
        text, line = insert_after(BASE, 'log_level = "info";',
                                  'trusted_proxies = [\n    "nonsense",\n    "10.0.0.0/8"\n];')
        self.assertInvalid(text, line + 1, "trusted_proxies")

    def test_wrong_type_workers(self):
        text, line = replace_line(BASE, "workers = 2;", 'workers = "x";')
        self.assertInvalid(text, line, "workers")

    def test_wrong_type_weight(self):
        text, line = replace_line(BASE, 'weight = 3;',
                                  '            { address = "127.0.0.1:19002"; weight = "3"; }')
        self.assertInvalid(text, line, "weight")

    def test_workers_out_of_range(self):
        text, line = replace_line(BASE, "workers = 2;", "workers = 0;")
        self.assertInvalid(text, line, "workers")

    def test_bad_port(self):
        text, line = replace_line(BASE, 'address = "127.0.0.1:18080";',
                                  '        address = "127.0.0.1:99999";')
        self.assertInvalid(text, line, "127.0.0.1:99999")

    def test_bad_address(self):
        text, line = replace_line(BASE, 'address = "127.0.0.1:18080";',
                                  '        address = "nonsense";')
        self.assertInvalid(text, line, "nonsense")

    def test_bad_server_address(self):
        text, line = replace_line(BASE, '{ address = "127.0.0.1:19003"; }',
                                  '            { address = "127.0.0.1"; }')
        self.assertInvalid(text, line, "127.0.0.1")

    def test_duplicate_pool_name(self):
        text, line = replace_line(BASE, 'name = "api";', '        name = "web";')
        self.assertInvalid(text, line, "web")

    def test_route_to_missing_pool(self):
        text, line = replace_line(BASE, 'pool = "api";', '        pool = "nope";')
        self.assertInvalid(text, line, "nope")

    def test_bad_duration(self):
        text, line = replace_line(BASE, 'connect = "2s";', '    connect = "10 parsecs";')
        self.assertInvalid(text, line, "10 parsecs")

    def test_bad_shutdown_timeout(self):
        text, line = replace_line(BASE, 'shutdown_timeout = "10s";', 'shutdown_timeout = "soon";')
        self.assertInvalid(text, line, "soon")

    def test_unknown_strategy(self):
        text, line = replace_line(BASE, 'strategy = "round_robin";',
                                  '        strategy = "least_conn_please";')
        self.assertInvalid(text, line, "least_conn_please")

    def test_weight_out_of_range(self):
        text, line = replace_line(BASE, 'weight = 3;',
                                  '            { address = "127.0.0.1:19002"; weight = 1001; }')
        self.assertInvalid(text, line, "weight")

    def test_breaker_out_of_range(self):
        """circuit_breaker values out of range, each at its line."""
        for key, bad, what in (("failure_ratio", "1.5", "between 0 and 1"),
                               ("max_ejection_percent", "101", "between 0 and 100"),
                               ("half_open_requests", "0", "between 1 and 1000"),
                               ("open", '"10m"', "must not exceed open_max")):
            with self.subTest(key):
                text, line = insert_after(BASE, 'strategy = "round_robin";',
                                          f"        circuit_breaker = {{\n"
                                          f"            {key} = {bad};\n        }};")
                self.assertInvalid(text, line + 1, what)
        text, line = insert_after(BASE, 'strategy = "round_robin";',
                                  "        passive_health = { failures = 3; };\n"
                                  "        circuit_breaker = { failures = 3; };")
        self.assertInvalid(text, line, "keep circuit_breaker")

    def test_retries_out_of_range(self):
        """retries values out of range (lbd -t), each at its line."""
        for key, bad, what in (("attempts", "0", "between 1 and 10"),
                               ("attempts", "11", "between 1 and 10"),
                               ("budget", "101", "between 0 and 100"),
                               ("on", '[ "connect", "502", "sometimes" ]',
                                'unknown \'on\' entry "sometimes"'),
                               ("methods", '"most"', 'must be "idempotent" or "all"')):
            with self.subTest(key=key, bad=bad):
                text, line = insert_after(BASE, 'strategy = "round_robin";',
                                          f"        retries = {{\n"
                                          f"            {key} = {bad};\n        }};")
                self.assertInvalid(text, line + 1, what)

    def test_missing_listeners(self):
        lines = BASE.split("\n")
        start = lines.index("listeners = (")
        text = "\n".join(lines[:start] + lines[start + 5:])
        rc, err, path = self.check(text)
        self.assertEqual(rc, 1, err)
        self.assertIn("listeners", err)
        self.assertIn(f"{path}:", err)
