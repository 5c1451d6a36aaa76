"""ACME (issue 14): lbd obtains and renews certificates from a real ACME
server, pebble (Debian package `pebble`), started by each test on free
loopback ports with pebble-challtestsrv as its DNS server (every name is
127.0.0.1), and pebble's validation ports pointed at lbd's listeners.

pebble runs with -strict; settings: PEBBLE_VA_NOSLEEP=1 (no random 0-15 s sleep before each
validation: it only makes tests slow). Nonce rejection stays at pebble's
default (15 % of good nonces refused as badNonce), so lbd's retry of
badNonce runs in every test. Authorization reuse stays at its default too.
The renewal test asks for certificates valid 90 s
("certificateValidityPeriod", pebble 2.4's config) with renew_before 75s.
"""
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

from lbdtest import LbdTestCase, free_port, lbd_config, wait_for
from lbdextra import admin_metrics, admin_status
from test_tls import OPENSSL, Pki, run, with_listener_keys

PEBBLE = shutil.which("pebble")
CHALLTESTSRV = shutil.which("pebble-challtestsrv")
NAMES = ["a.lbd.test", "b.lbd.test"]
# Longer than a common name may be (64): in the subjectAltName only.
LONG = "l" * 60 + ".lbd.test"


class Pebble:
    """pebble and pebble-challtestsrv on free loopback ports. HTTP_PORT and
    TLS_PORT: where pebble validates HTTP-01 and TLS-ALPN-01 (lbd's plain
    and TLS listeners)."""

    def __init__(self, tc, http_port, tls_port, validity=None):
        self.dir = tempfile.mkdtemp(prefix="lbd-e2e-pebble-")
        tc.addCleanup(shutil.rmtree, self.dir, True)
        self.pki = Pki(self.dir)
        cert, key = self.pki.cert("localhost", ["localhost"])
        self.port, self.mgmt = free_port(), free_port()
        dns, dns_mgmt = free_port(), free_port()
        conf = {"pebble": {"listenAddress": f"127.0.0.1:{self.port}",
                           "managementListenAddress": f"127.0.0.1:{self.mgmt}",
                           "certificate": cert, "privateKey": key,
                           "httpPort": http_port, "tlsPort": tls_port,
                           "ocspResponderURL": "", "externalAccountBindingRequired": False}}
        if validity is not None:
            conf["pebble"]["certificateValidityPeriod"] = validity
        path = os.path.join(self.dir, "pebble.json")
        with open(path, "w") as f:
            json.dump(conf, f)
        self.log_path = os.path.join(self.dir, "pebble.log")
        log = open(self.log_path, "w")
        tc.addCleanup(log.close)
        self.procs = []
        self._start(tc, [CHALLTESTSRV, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
                         "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "",
                         "-tlsalpn01", "", "-management", f"127.0.0.1:{dns_mgmt}"], log)
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1")
        self._start(tc, [PEBBLE, "-strict", "-config", path, "-dnsserver", f"127.0.0.1:{dns}"],
                    log, env)
        self.directory = f"https://localhost:{self.port}/dir"
        self.ctx = ssl.create_default_context(cafile=self.pki.ca)
        wait_for(self._up, timeout=20, what="pebble to answer")

    def _start(self, tc, cmd, log, env=None):
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                             stdin=subprocess.DEVNULL)
        self.procs.append(p)

        def stop():
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        tc.addCleanup(stop)

    def _up(self):
        try:
            with urllib.request.urlopen(self.directory, context=self.ctx, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def root(self):
        """pebble's root (it makes a new one at every start), as a file."""
        with urllib.request.urlopen(f"https://localhost:{self.mgmt}/roots/0", context=self.ctx,
                                    timeout=5) as r:
            pem = r.read()
        path = os.path.join(self.dir, "root.pem")
        with open(path, "wb") as f:
            f.write(pem)
        return path

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()


def peer_cert(addr, name, cafile):
    """The certificate lbd serves for NAME, verified against CAFILE
    (chain and name): the dict of getpeercert()."""
    host, port = addr.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            return t.getpeercert()


@unittest.skipUnless(PEBBLE and CHALLTESTSRV, "pebble is not installed (Debian package pebble; "
                     "make deps)")
class AcmeTest(LbdTestCase):

    def acme_lbd(self, challenge, renew_before="30d", validity=None, workers=2, start=True,
                 pebble_http_port=None, names=NAMES):
        self.names = names
        self.backend = self.start_backend("b1")
        self.tls_addr = f"127.0.0.1:{free_port()}"
        self.plain_addr = f"127.0.0.1:{free_port()}"
        self.admin_addr = f"127.0.0.1:{free_port()}"
        self.pebble = Pebble(self, pebble_http_port or int(self.plain_addr.rsplit(":", 1)[1]),
                             int(self.tls_addr.rsplit(":", 1)[1]), validity=validity)
        self.storage = self.path("acme")
        acme = (f'acme = {{ directory = "{self.pebble.directory}"; email = "ops@lbd.test"; '
                f'storage = "{self.storage}"; ca_file = "{self.pebble.pki.ca}"; '
                f'challenge = "{challenge}"; renew_before = "{renew_before}"; }};')
        text = lbd_config([self.tls_addr, self.plain_addr],
                          [{"name": "web", "servers": [(self.backend.addr, 1)]}],
                          workers=workers, admin=self.admin_addr, extra=acme)
        tls = "tls = { acme = [ " + ", ".join(f'"{n}"' for n in names) + " ]; };"
        text = with_listener_keys(text, self.tls_addr, tls)
        text = with_listener_keys(text, self.plain_addr,
                                  f"redirect_https = {self.tls_addr.rsplit(':', 1)[1]};")
        self.config_text = text
        if start:
            self.start_lbd(text, self.plain_addr, workers=workers)
        return text

    def wait_names_valid(self, timeout=90):
        def valid():
            st = admin_status(self.admin_addr)
            names = {n["name"]: n for n in st.get("acme", {}).get("names", [])}
            return all(names.get(n, {}).get("state") == "valid" for n in self.names)
        try:
            wait_for(valid, timeout=timeout, interval=0.5, what="both ACME names valid")
        except AssertionError:
            print(self.lbd.log()[-4000:])
            print(self.pebble.log()[-4000:])
            raise

    def served(self, root):
        return {n: peer_cert(self.tls_addr, n, root) for n in self.names}

    def check_chain(self, root, name):
        """openssl s_client -servername NAME: pebble's chain, verified."""
        host, port = self.tls_addr.rsplit(":", 1)
        r = run([OPENSSL, "s_client", "-connect", f"{host}:{port}", "-servername", name,
                 "-CAfile", root, "-verify_return_error", "-verify_hostname", name,
                 "-showcerts"], input=b"", timeout=20)
        out = (r.stdout + r.stderr).decode("utf-8", "replace")
        self.assertEqual(r.returncode, 0, out)
        self.assertIn("Verify return code: 0 (ok)", out)
        self.assertRegex(out, r"i:.*Pebble Intermediate CA")
        if len(name) <= 64:
            self.assertRegex(out, rf"s:.*CN\s*=\s*{re.escape(name)}")

    def test_http01_two_names_then_restart_orders_nothing(self):
        """HTTP-01 for two names on a TLS listener with only acme names:
        pebble validates over lbd's plain listener (which redirects
        everything else to https), lbd serves pebble's chain for each name
        (s_client verifies it against pebble's root); the account key and
        certificates are 0600 in storage. Reloaded, then restarted, lbd
        takes the stored certificates and orders nothing while they are
        valid."""
        self.acme_lbd("http-01")
        self.wait_names_valid()
        root = self.pebble.root()
        for n in NAMES:
            self.check_chain(root, n)
        first = self.served(root)
        for n in NAMES:
            self.assertIn(("DNS", n), first[n]["subjectAltName"])
        for f in ["account.key"] + [f"{n}.pem" for n in NAMES]:
            mode = os.stat(os.path.join(self.storage, f)).st_mode & 0o777
            self.assertEqual(mode, 0o600, f)
        log = self.lbd.log()
        self.assertGreaterEqual(log.count("acme: HTTP-01 challenge answered"), 2)
        m = admin_metrics(self.admin_addr)
        self.assertEqual(m.value("lbd_acme_orders_total", result="valid"), 2)
        self.assertEqual(m.value("lbd_acme_orders_total", result="failed"), 0)
        expiry = {lb["subject"]: v for lb, v in
                  m.select("lbd_tls_certificate_expiry_timestamp_seconds")}
        self.assertEqual(sorted(expiry), [f"CN={n}" for n in NAMES])
        st = admin_status(self.admin_addr)
        for e in st["acme"]["names"]:
            self.assertEqual(e["not_after_s"], expiry[f"CN={e['name']}"])
            self.assertGreater(e["renew_at_s"], time.time())
        # Everything else on the plain listener is still redirected.
        r = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                 f"http://{self.plain_addr}/.well-known/acme-challenge/nope"])
        self.assertEqual(r.stdout, b"200")      # unknown token: routed to the backend
        r = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{self.plain_addr}/x"])
        self.assertEqual(r.stdout, b"308")

        # A reload takes the stored certificates and orders nothing.
        before = len(self.lbd.log())
        self.lbd.reload()
        wait_for(lambda: self.lbd.log()[before:].count("stored certificate valid") >= 2,
                 timeout=20, what="the stored certificates taken after the reload")
        again = self.served(root)
        for n in NAMES:
            self.assertEqual(again[n]["serialNumber"], first[n]["serialNumber"])
        self.assertNotIn("ordering a certificate", self.lbd.log()[before:])

        # So does a restart.
        before = len(self.lbd.log())
        self.lbd.stop()
        self._lbds.remove(self.lbd)
        self.lbd = None
        self.start_lbd(self.config_text, self.plain_addr, name="lbd2.conf")
        wait_for(lambda: self.lbd.log()[before:].count("stored certificate valid") >= 2,
                 timeout=20, what="the stored certificates taken")
        self.wait_names_valid(timeout=10)
        again = self.served(root)
        for n in NAMES:
            self.assertEqual(again[n]["serialNumber"], first[n]["serialNumber"])
        self.assertNotIn("ordering a certificate", self.lbd.log()[before:])
        m = admin_metrics(self.admin_addr)
        self.assertEqual(m.value("lbd_acme_orders_total", result="valid"), 0)

    def test_tls_alpn01_two_names(self):
        """TLS-ALPN-01: pebble validates on lbd's TLS listener with ALPN
        acme-tls/1 and gets the challenge certificate; the names' own
        certificates are then pebble's, verified by s_client. One name is
        longer than a common name may be (69 bytes)."""
        self.acme_lbd("tls-alpn-01", names=[NAMES[0], LONG])
        self.wait_names_valid()
        root = self.pebble.root()
        for n in self.names:
            self.check_chain(root, n)
        log = self.lbd.log()
        self.assertGreaterEqual(log.count("acme: TLS-ALPN-01 challenge certificate served"), 2)
        self.assertNotIn("acme: HTTP-01 challenge answered", log)

    def test_renewal_goes_live_without_restart(self):
        """Certificates valid 90 s with renew_before 75s: lbd renews each
        about 15 s after it was issued; a new serial is served with no
        reload or restart (same master and workers), while a keep-alive
        client's requests over one TLS connection all succeed."""
        self.acme_lbd("http-01", renew_before="75s", validity=90)
        self.wait_names_valid()
        root = self.pebble.root()
        first = self.served(root)
        workers = sorted(self.lbd.worker_pids().values())
        stop = threading.Event()
        counts = {"ok": 0, "errors": 0}

        def keepalive():
            host, port = self.tls_addr.rsplit(":", 1)
            ctx = ssl.create_default_context(cafile=root)
            try:
                with socket.create_connection((host, int(port)), timeout=10) as s:
                    with ctx.wrap_socket(s, server_hostname=NAMES[0]) as t:
                        f = t.makefile("rb")
                        for _ in range(20000):
                            if stop.is_set():
                                break
                            t.sendall(b"GET / HTTP/1.1\r\nHost: a.lbd.test\r\n\r\n")
                            line = f.readline()
                            length = 0
                            while True:
                                h = f.readline()
                                if h in (b"\r\n", b""):
                                    break
                                if h.lower().startswith(b"content-length:"):
                                    length = int(h.split(b":")[1])
                            body = f.read(length)
                            if line.startswith(b"HTTP/1.1 200") and len(body) == length:
                                counts["ok"] += 1
                            else:
                                counts["errors"] += 1
                                break
                            time.sleep(0.02)
            except OSError:
                counts["errors"] += 1

        th = threading.Thread(target=keepalive)
        th.start()
        try:
            def renewed():
                now = self.served(root)
                return all(now[n]["serialNumber"] != first[n]["serialNumber"] for n in NAMES)
            wait_for(renewed, timeout=90, interval=1, what="new serials served")
        finally:
            stop.set()
            th.join(30)
        self.assertEqual(counts["errors"], 0)
        self.assertGreater(counts["ok"], 10)
        self.assertEqual(sorted(self.lbd.worker_pids().values()), workers)
        self.assertNotIn("reloading", self.lbd.log())
        m = admin_metrics(self.admin_addr)
        self.assertGreaterEqual(m.value("lbd_acme_orders_total", result="valid"), 4)
        self.assertIn("certificates loaded again", self.lbd.log())

    def test_respawned_worker_loads_the_acme_certificates(self):
        """Workers that die after the certificates were obtained are
        respawned from the master, whose contexts were built before them
        (with no certificate at all): the new workers load the stored
        files at their first handshake, so every connection gets pebble's
        certificate."""
        self.expect_worker_deaths()
        self.acme_lbd("http-01")
        self.wait_names_valid()
        root = self.pebble.root()
        old = self.lbd.worker_pids()
        for pid in old.values():
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(self.lbd.worker_pids()) == 2 and
                 not set(self.lbd.worker_pids().values()) & set(old.values()),
                 timeout=20, what="both workers respawned")
        self.lbd.wait_ready(workers=2)
        for _ in range(10):
            for n in NAMES:
                self.assertIn(("DNS", n), peer_cert(self.tls_addr, n, root)["subjectAltName"])

    def test_failed_validation_is_logged_and_backed_off(self):
        """pebble validates HTTP-01 on a port where nothing listens: each
        order fails with pebble's problem detail in the log and /status,
        is counted as failed, and is tried again after 10 s, then 20 s."""
        self.acme_lbd("http-01", pebble_http_port=free_port())

        def failed_twice():
            st = admin_status(self.admin_addr)
            return all(e["orders"]["failed"] >= 2 for e in st["acme"]["names"])
        wait_for(failed_twice, timeout=60, interval=0.5, what="two failed orders per name")
        st = admin_status(self.admin_addr)
        for e in st["acme"]["names"]:
            self.assertIn(e["state"], ("failed", "ordering"))
            self.assertEqual(e["orders"]["valid"], 0)
        names = {e["name"]: e for e in st["acme"]["names"]}
        self.assertRegex(names[NAMES[0]]["error"], "connection refused|Connection refused")
        log = self.lbd.log()
        for n in NAMES:
            self.assertEqual(log.count(f"acme: {n}: order failed (again in 10s)"), 1)
            self.assertEqual(log.count(f"acme: {n}: order failed (again in 20s)"), 1)
        self.assertFalse(os.path.exists(os.path.join(self.storage, f"{NAMES[0]}.pem")))
        # No certificate: handshakes are refused, the challenge path is not.
        with self.assertRaises((ssl.SSLError, OSError)):
            peer_cert(self.tls_addr, NAMES[0], self.pebble.pki.ca)


if __name__ == "__main__":
    unittest.main()
