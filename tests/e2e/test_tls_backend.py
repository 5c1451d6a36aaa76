"""TLS to backends (pools[].tls): lbd connects to Python ssl servers
started by the test, with certificates from a throwaway CA (test_tls.Pki).
The servers record what they saw: the SNI name, whether the session was
resumed, the requests."""
import json
import os
import socket
import ssl
import threading

from lbdtest import LbdTestCase, free_port, http_get, lbd_config, wait_for
from lbdextra import admin_metrics_text
from test_tls import Pki, run


class TlsServer:
    """An HTTPS/1.1 server on loopback: keep-alive, GET only; every answer
    is JSON {sni, reused, conn, n}. CLIENT_CA: client certificates
    required, checked against it."""

    def __init__(self, cert, key, client_ca=None):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        if client_ca:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(client_ca)
        self._tl = threading.local()
        self.ctx.sni_callback = self._sni
        self.lock = threading.Lock()
        self.handshakes = []        # (sni, reused) per completed handshake
        self.failed = 0             # handshakes that failed
        self.requests = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.closing = False
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _sni(self, sslobj, name, ctx):
        self._tl.sni = name

    def _accept(self):
        while not self.closing:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, raw):
        raw.settimeout(20)
        self._tl.sni = None
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            with self.lock:
                self.failed += 1
            raw.close()
            return
        with self.lock:
            self.handshakes.append((self._tl.sni, s.session_reused))
            conn = len(self.handshakes)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                with self.lock:
                    self.requests += 1
                    n = self.requests
                body = json.dumps({"sni": self._tl.sni, "reused": s.session_reused,
                                   "conn": conn, "n": n}).encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body)
        except (ssl.SSLError, OSError):
            pass
        finally:
            s.close()

    def close(self):
        self.closing = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


class BackendTlsTest(LbdTestCase):

    @classmethod
    def setUpClass(cls):
        import tempfile
        import shutil
        cls._shutil = shutil
        cls.pki_dir = tempfile.mkdtemp(prefix="lbd-e2e-pki-")
        os.chmod(cls.pki_dir, 0o755)
        cls.pki = Pki(cls.pki_dir)
        cls.srv = cls.pki.cert("backend.internal", ["backend.internal"])
        cls.client = cls.pki.cert("lbd-client", ["lbd-client"])
        other_dir = os.path.join(cls.pki_dir, "other")
        os.mkdir(other_dir)
        cls.other = Pki(other_dir, "lbd other test CA")  # signed none of them; its own name

    @classmethod
    def tearDownClass(cls):
        cls._shutil.rmtree(cls.pki_dir, ignore_errors=True)

    def server(self, **kw):
        s = TlsServer(*self.srv, **kw)
        self.addCleanup(s.close)
        return s

    def lbd_for(self, servers, tls, workers=1, admin=False, **pool):
        self.addr = f"127.0.0.1:{free_port()}"
        self.admin_addr = f"127.0.0.1:{free_port()}" if admin else None
        p = {"name": "secure", "servers": [(s.addr, 1) for s in servers], "tls": tls}
        p.update(pool)
        text = lbd_config(self.addr, [p], workers=workers, admin=self.admin_addr)
        self.config_text = text
        return self.start_lbd(text, self.addr, workers=workers)

    def get(self, path="/"):
        r = http_get(self.addr, path)
        return r.status, (json.loads(r.body) if r.status == 200 else None)

    def server_stats(self, address):
        for p in self.lbd.snapshot()["pools"]:
            for s in p["servers"]:
                if s["address"] == address:
                    return s
        raise AssertionError(f"no server {address}")

    def test_verified_with_sni_and_sessions_resumed(self):
        """verify against ca_file with sni = "backend.internal": the server
        sees that name; with no idle connections kept (keepalive = 0) every
        request is a new connection, the first a full handshake and the
        next ones resumed with the session the server gave (its own
        session_reused says so); lbd -s and /metrics count them."""
        b = self.server()
        self.lbd_for([b], {"ca_file": self.pki.ca, "sni": "backend.internal"}, keepalive=0,
                     admin=True)
        for i in range(6):
            status, body = self.get()
            self.assertEqual(status, 200)
            self.assertEqual(body["sni"], "backend.internal")
        self.assertEqual(b.requests, 6)
        self.assertEqual([r for _, r in b.handshakes], [False] + [True] * 5, b.handshakes)
        st = self.server_stats(b.addr)
        self.assertEqual(st["tls_handshakes"], {"full": 1, "resumed": 5, "failed": 0})
        m = admin_metrics_text(self.admin_addr)
        self.assertIn('lbd_backend_tls_handshakes_total{pool="secure",server="%s",result="resumed"} 5'
                      % b.addr, m)

    def test_keepalive_connections_stay_tls(self):
        """Pooled keep-alive backend connections are TLS connections
        reused: 10 requests, one handshake, one connection."""
        b = self.server()
        self.lbd_for([b], {"ca_file": self.pki.ca, "sni": "backend.internal"})
        conns = set()
        for i in range(10):
            status, body = self.get()
            self.assertEqual(status, 200)
            conns.add(body["conn"])
        self.assertEqual((b.requests, len(b.handshakes), conns), (10, 1, {1}))
        st = self.server_stats(b.addr)
        self.assertEqual(st["tls_handshakes"]["full"], 1)

    def test_wrong_ca_or_name_fails_like_a_connect_and_is_logged_once(self):
        """A certificate the ca_file does not vouch for, or a name it does
        not have: 502 (a connect failure: the server's failures count
        it), the handshakes counted as failed, and one log line per reason,
        however many requests fail."""
        b = self.server()
        self.lbd_for([b], {"ca_file": self.other.ca, "sni": "backend.internal"})
        for _ in range(4):
            self.assertEqual(self.get()[0], 502)
        st = self.server_stats(b.addr)
        self.assertEqual(st["tls_handshakes"], {"full": 0, "resumed": 0, "failed": 4})
        self.assertGreaterEqual(st["failures"], 4)
        self.assertEqual(b.requests, 0)
        self.lbd.wait_log(r"TLS handshake with 127\.0\.0\.1:\d+ failed: unable to get local issuer")
        self.assertEqual(self.lbd.log().count("TLS handshake with"), 1, self.lbd.log())
        self.assertNotIn("connect() to", self.lbd.log())
        # The right CA, the wrong name.
        text = self.config_text.replace(self.other.ca, self.pki.ca).replace(
            'sni = "backend.internal"', 'sni = "other.internal"')
        self.lbd.reload(text)
        wait_for(lambda: self.get()[0] == 502 and "mismatch" in self.lbd.log(), 10,
                 what="a hostname mismatch")
        self.assertEqual(b.requests, 0)

    def test_verify_by_ip_without_sni(self):
        """Without sni the certificate must name the server's IP address:
        ours names backend.internal only, so it fails; verify = false
        takes it (with a warning at load)."""
        b = self.server()
        self.lbd_for([b], {"ca_file": self.pki.ca})
        self.assertEqual(self.get()[0], 502)
        self.lbd.wait_log(r"failed: [Ii][Pp] address mismatch")
        self.lbd.reload(self.config_text.replace(f'ca_file = "{self.pki.ca}";', "verify = false;"))
        wait_for(lambda: self.get()[0] == 200, 10, what="verify = false to take the server")
        self.assertEqual(b.handshakes[-1][0], None)     # no SNI sent
        self.lbd.wait_log(r"tls\.verify = false")

    def test_retry_goes_to_the_other_server(self):
        """Two servers, one with a certificate from another CA: with
        retries on connect every request ends 200 on the good one."""
        good = self.server()
        bad = TlsServer(*self.other.cert("backend.internal", ["backend.internal"]))
        self.addCleanup(bad.close)
        self.lbd_for([bad, good], {"ca_file": self.pki.ca, "sni": "backend.internal"},
                     retries={"attempts": 2, "backoff": "1ms"})
        for _ in range(6):
            self.assertEqual(self.get()[0], 200)
        self.assertEqual(good.requests, 6)
        self.assertEqual(bad.requests, 0)
        self.assertGreaterEqual(self.server_stats(bad.addr)["tls_handshakes"]["failed"], 1)

    def test_failed_handshakes_open_the_breaker(self):
        """The circuit breaker counts failed handshakes as failures: after
        `failures` of them it opens, and the next requests get 503 without
        a connection to the server (no more handshakes counted)."""
        b = self.server()
        self.lbd_for([b], {"ca_file": self.other.ca, "sni": "backend.internal"},
                     circuit_breaker={"failures": 3, "open": "1m"})
        for _ in range(3):
            self.assertEqual(self.get()[0], 502)
        st = self.server_stats(b.addr)
        self.assertEqual((st["breaker"], st["tls_handshakes"]["failed"]), ("open", 3), st)
        for _ in range(3):
            self.assertEqual(self.get()[0], 503)
        self.assertEqual(self.server_stats(b.addr)["tls_handshakes"]["failed"], 3)
        wait_for(lambda: b.failed >= 3, 10, what="the server to see three failed handshakes")
        self.assertEqual((b.failed, len(b.handshakes)), (3, 0))

    def test_client_certificate(self):
        """A server that requires a client certificate: lbd's cert/key
        get through; without them the handshake fails (502)."""
        b = self.server(client_ca=self.pki.ca)
        cert, key = self.client
        self.lbd_for([b], {"ca_file": self.pki.ca, "sni": "backend.internal", "cert": cert,
                           "key": key})
        self.assertEqual(self.get()[0], 200)
        self.lbd.reload(self.config_text.replace(f' cert = "{cert}"; key = "{key}";', ""))
        wait_for(lambda: self.get()[0] == 502, 10, what="no client certificate: 502")

    def test_health_checks_speak_tls(self):
        """A TLS pool's health checks are made over TLS and verified like
        its requests: the server stays UP; checked against another CA it
        goes DOWN, its last error saying why."""
        b = self.server()
        hc = {"path": "/", "interval": "100ms", "timeout": "5s", "rise": 1, "fall": 1}
        self.lbd_for([b], {"ca_file": self.pki.ca, "sni": "backend.internal"}, health_check=hc)
        wait_for(lambda: self.server_stats(b.addr)["checks"]["ok"] >= 3, 15,
                 what="three passed checks")
        st = self.server_stats(b.addr)
        self.assertEqual((st["health"], st["checks"]["failed"]), ("up", 0),
                         (st, self.lbd.log()[-3000:]))
        self.assertEqual(self.get()[0], 200)
        self.lbd.reload(self.config_text.replace(self.pki.ca, self.other.ca))
        st = wait_for(lambda: (lambda s: s if s["health"] == "down" else None)(
            self.server_stats(b.addr)), 15, what="the server DOWN")
        self.assertIn("TLS: unable to get local issuer certificate", st["checks"]["last_error"])

    def test_config_errors(self):
        """Bad pools[].tls settings are errors with FILE:LINE."""
        b = self.server()
        self.addr = f"127.0.0.1:{free_port()}"

        def check(tls, want):
            text = lbd_config(self.addr, [{"name": "p", "servers": [(b.addr, 1)], "tls": tls}])
            path = self.write_file(self.path("bad.conf"), text)
            r = run([self.lbd_bin, "-t", "-c", path])
            err = r.stderr.decode()
            self.assertNotEqual(r.returncode, 0, err)
            self.assertRegex(err, r"bad\.conf:\d+: .*" + want)

        check({"ca_file": "/nonexistent/ca.pem"}, "cannot read ca_file /nonexistent/ca.pem")
        check({"ca_file": self.srv[1]}, "no PEM certificate")
        check({"cert": self.client[0]}, "needs both 'cert' and 'key'")
        check({"sni": "bad name"}, "sni must be a host name")
        check({"verify": "yes"}, "verify")
        check({"bogus": 1}, "bogus")
