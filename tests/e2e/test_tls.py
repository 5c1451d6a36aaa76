"""TLS termination: listeners with `tls = { ... }` in front of plain
backends. Certificates come from a throwaway CA made with the openssl
command for each test class (nothing private is committed); clients are
curl, `openssl s_client` and Python's ssl module."""
import json
import os
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time

from lbdtest import LbdTestCase, connect, free_port, lbd_config, recv_until_eof, wait_for
from lbdextra import admin_metrics, admin_metrics_text, admin_status, wait_control

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
CURL = shutil.which("curl") or "/usr/bin/curl"
PROMTOOL = "/usr/bin/promtool"


def run(cmd, **kw):
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("timeout", 30)
    return subprocess.run(cmd, **kw)


class Pki:
    """A CA and certificates signed by it, in DIR (made with openssl)."""

    CA_CNF = """[ca]
default_ca = CA_default
[CA_default]
database = {d}/index.txt
new_certs_dir = {d}
serial = {d}/serial.txt
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = copy
[policy_any]
commonName = supplied
"""

    def __init__(self, d, name="lbd test CA"):
        self.dir = d
        self.ca = os.path.join(d, "ca.pem")
        self.ca_key = os.path.join(d, "ca.key")
        self._ok(run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                      "ec_paramgen_curve:P-256", "-nodes", "-keyout", self.ca_key, "-out", self.ca,
                      "-days", "2", "-subj", f"/CN={name}"]))
        with open(os.path.join(d, "ca.cnf"), "w") as f:
            f.write(self.CA_CNF.format(d=d))
        open(os.path.join(d, "index.txt"), "w").close()
        with open(os.path.join(d, "serial.txt"), "w") as f:
            f.write("1000\n")

    @staticmethod
    def _ok(r):
        if r.returncode != 0:
            raise AssertionError(f"openssl failed: {r.stderr.decode(errors='replace')}")

    def _key(self, path, kind):
        if kind == "rsa":
            self._ok(run([OPENSSL, "genpkey", "-algorithm", "RSA", "-pkeyopt",
                          "rsa_keygen_bits:2048", "-out", path]))
        else:
            self._ok(run([OPENSSL, "genpkey", "-algorithm", "EC", "-pkeyopt",
                          "ec_paramgen_curve:P-256", "-out", path]))

    def cert(self, name, sans, kind="ec", expired=False):
        """A certificate for CN=NAME with DNS names SANS: (cert, key) paths."""
        base = os.path.join(self.dir, f"{name}-{kind}{'-expired' if expired else ''}")
        key, csr, pem = base + ".key", base + ".csr", base + ".pem"
        self._key(key, kind)
        san = ",".join(f"DNS:{s}" for s in sans)
        self._ok(run([OPENSSL, "req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={name}",
                      "-addext", f"subjectAltName={san}"]))
        dates = (["-startdate", "20200101000000Z", "-enddate", "20200102000000Z"] if expired
                 else ["-days", "1"])
        self._ok(run([OPENSSL, "ca", "-batch", "-config", os.path.join(self.dir, "ca.cnf"),
                      "-keyfile", self.ca_key, "-cert", self.ca, "-notext", "-in", csr,
                      "-out", pem] + dates))
        return pem, key


def tls_block(certs, **keys):
    """`tls = { ... };` for a listener: CERTS is a list of (cert, key)."""
    parts = ["certificates = ( " + ", ".join(f'{{ cert = "{c}"; key = "{k}"; }}'
                                              for c, k in certs) + " );"]
    for k, v in keys.items():
        if isinstance(v, bool):
            parts.append(f"{k} = {'true' if v else 'false'};")
        elif isinstance(v, list):
            parts.append(f"{k} = [ " + ", ".join(f'"{x}"' for x in v) + " ];")
        elif isinstance(v, int):
            parts.append(f"{k} = {v};")
        else:
            parts.append(f'{k} = "{v}";')
    return "tls = { " + " ".join(parts) + " };"


def with_listener_keys(text, address, keys):
    """Add KEYS (libconfig text) to the listener of ADDRESS in TEXT."""
    needle = f'{{ address = "{address}";'
    assert needle in text, (needle, text)
    return text.replace(needle, needle + " " + keys, 1)


def s_client(addr, servername=None, args=(), request=True, timeout=15):
    """openssl s_client to ADDR: its output (stdout and stderr) and exit
    status. With REQUEST, a GET with Connection: close is sent and the
    answer read (-ign_eof: TLS 1.3 tickets come after the handshake)."""
    host, port = addr.rsplit(":", 1)
    cmd = [OPENSSL, "s_client", "-connect", f"{host}:{port}"]
    if servername is not None:
        cmd += ["-servername", servername]
    else:
        cmd += ["-noservername"]
    cmd += list(args)
    data = b""
    if request:
        cmd.append("-ign_eof")
        data = f"GET / HTTP/1.1\r\nHost: {servername or 'lbd.test'}\r\nConnection: close\r\n\r\n".encode()
    r = run(cmd, input=data, timeout=timeout)
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


def peer_subject(out):
    m = re.search(r"^subject=(.*)$", out, re.M)
    return m.group(1).strip() if m else None


class TlsCase(LbdTestCase):
    """A CA and certificates for the class; helpers to start a TLS lbd."""

    @classmethod
    def setUpClass(cls):
        cls.pki_dir = tempfile.mkdtemp(prefix="lbd-e2e-pki-")
        os.chmod(cls.pki_dir, 0o755)
        cls.pki = Pki(cls.pki_dir)
        cls.a = cls.pki.cert("a.lbd.test", ["a.lbd.test", "*.w.lbd.test"])
        cls.b = cls.pki.cert("b.lbd.test", ["b.lbd.test"])

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.pki_dir, ignore_errors=True)

    def tls_lbd(self, certs=None, workers=2, tls_keys=None, plain=False, admin=None,
                start=True, **kw):
        """lbd with a TLS listener (self.tls_addr) and, with PLAIN, a plain
        one (self.plain_addr), over one test backend."""
        self.backend = self.start_backend("b1")
        self.tls_addr = f"127.0.0.1:{free_port()}"
        listen = [self.tls_addr]
        if plain:
            self.plain_addr = f"127.0.0.1:{free_port()}"
            listen.append(self.plain_addr)
        self.admin_addr = f"127.0.0.1:{free_port()}" if admin else None
        text = lbd_config(listen, [{"name": "web", "servers": [(self.backend.addr, 1)]}],
                          workers=workers, admin=self.admin_addr, **kw)
        text = with_listener_keys(text, self.tls_addr,
                                  tls_block(certs or [self.a, self.b], **(tls_keys or {})))
        self.config_text = text
        if not start:
            return text
        # Ready once the plain TCP accept works; `lbd -s` then says the rest.
        return self.start_lbd(text, self.tls_addr, workers=workers)

    def curl(self, path="/", host="a.lbd.test", addr=None, extra=()):
        """curl over TLS, checking the certificate against our CA: (status,
        head, body)."""
        addr = addr or self.tls_addr
        h, port = addr.rsplit(":", 1)
        r = run([CURL, "-sS", "--cacert", self.pki.ca, "--resolve", f"{host}:{port}:{h}",
                 "-D", "-", "-o", "-", f"https://{host}:{port}{path}"] + list(extra))
        out = r.stdout.decode("utf-8", "replace")
        if r.returncode != 0:
            return None, r.stderr.decode("utf-8", "replace"), ""
        head, _, body = out.partition("\r\n\r\n")
        return int(head.split()[1]), head, body

    def tls_totals(self):
        return self.lbd.snapshot()["totals"]


class TlsTest(TlsCase):

    def test_https_to_plain_backend_says_https(self):
        """curl --cacert through lbd's TLS listener: 200 from the plain
        backend, which is told X-Forwarded-Proto: https (and Forwarded
        proto=https); a full handshake counted in lbd -s; the access log
        line ends with the TLS version and cipher."""
        log = self.path("access.log")
        self.tls_lbd(extra=f'access_log = "{log}";')
        status, head, body = self.curl("/?echo=1")
        self.assertEqual(status, 200, head)
        self.assertIn("X-Forwarded-Proto: https\r\n", body)
        status, head, body = self.curl("/?echo=1", extra=["-H", "Forwarded: for=1.2.3.4"])
        self.assertEqual(status, 200, head)
        self.assertIn(";proto=https\r\n", body)
        t = self.tls_totals()
        self.assertGreaterEqual(t["tls_handshakes"]["full"], 2)
        self.assertEqual(t["tls_handshakes"]["resumed"], 0)
        lines = wait_for(lambda: (lambda t: t if t.count("\n") >= 2 else None)(
            open(log).read() if os.path.exists(log) else ""), 10, what="two access log lines")
        for ln in lines.splitlines():
            self.assertRegex(ln, r'"GET /\?echo=1 HTTP/1.1" 200 .* tls=TLSv1\.3 '
                                 r'cipher=TLS_[A-Z0-9_]+$')

    def test_keepalive_and_large_bodies_both_ways(self):
        """Several requests on one TLS connection, a 1 MB download and a
        300 KB upload: every byte arrives (records of 16 KiB, partial
        writes, back-pressure through the TLS layer)."""
        self.tls_lbd()
        ctx = ssl.create_default_context(cafile=self.pki.ca)
        raw = connect(self.tls_addr)
        with ctx.wrap_socket(raw, server_hostname="a.lbd.test") as s:
            for i in range(3):
                s.sendall(b"GET /?size=1000000 HTTP/1.1\r\nHost: a.lbd.test\r\n\r\n")
                head, body = self._read_response(s)
                self.assertIn(b" 200 ", head.split(b"\r\n")[0])
                self.assertEqual(len(body), 1000000)
            up = os.urandom(300000)
            s.sendall(b"POST /?echo=1 HTTP/1.1\r\nHost: a.lbd.test\r\nContent-Length: %d\r\n\r\n"
                      % len(up) + up)
            head, body = self._read_response(s)
            self.assertIn(b" 200 ", head.split(b"\r\n")[0])
            self.assertIn(b"X-Body-Bytes: 300000", head)

    @staticmethod
    def _read_response(s):
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                raise AssertionError("connection closed in the head")
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        n = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        while len(rest) < n:
            d = s.recv(65536)
            if not d:
                raise AssertionError("connection closed in the body")
            rest += d
        return head, rest[:n]

    def test_sni_picks_the_certificate(self):
        """openssl s_client -servername: each name gets its certificate
        (exact, then *.w.lbd.test for one label); an unknown name, a name
        two labels under the wildcard and no SNI at all get the first one."""
        self.tls_lbd()
        cases = [("a.lbd.test", "a.lbd.test"), ("b.lbd.test", "b.lbd.test"),
                 ("B.LBD.TEST", "b.lbd.test"), ("x.w.lbd.test", "a.lbd.test"),
                 ("unknown.test", "a.lbd.test"), ("x.y.b.lbd.test", "a.lbd.test"), (None, "a.lbd.test")]
        for name, cn in cases:
            rc, out = s_client(self.tls_addr, name, ["-showcerts"])
            self.assertEqual(peer_subject(out), f"CN = {cn}", f"SNI {name}:\n{out[-2000:]}")
            self.assertIn("HTTP/1.1 200 OK", out)
        # And the other way round: b first is b the default.
        self.lbd.reload(with_listener_keys(self.config_text.replace(
            tls_block([self.a, self.b]), ""), self.tls_addr, tls_block([self.b, self.a])))
        rc, out = s_client(self.tls_addr, "unknown.test")
        self.assertEqual(peer_subject(out), "CN = b.lbd.test", out[-2000:])

    def test_ecdsa_and_rsa_certificates_side_by_side(self):
        """An ECDSA and an RSA certificate for the same names: a client that
        takes only RSA signatures gets the RSA one, others the ECDSA one."""
        rsa = self.pki.cert("a.lbd.test", ["a.lbd.test", "*.w.lbd.test"], kind="rsa")
        self.tls_lbd(certs=[self.a, rsa, self.b])
        rc, out = s_client(self.tls_addr, "a.lbd.test")
        self.assertIn("Server public key is 256 bit", out)
        rc, out = s_client(self.tls_addr, "a.lbd.test", ["-sigalgs", "rsa_pss_rsae_sha256"])
        self.assertIn("Server public key is 2048 bit", out)
        self.assertIn("HTTP/1.1 200 OK", out)
        rc, out = s_client(self.tls_addr, "b.lbd.test", ["-sigalgs", "rsa_pss_rsae_sha256"])
        self.assertNotIn("HTTP/1.1 200 OK", out)    # b has no RSA certificate

    def test_tls13_only_refuses_tls12(self):
        """protocols = "TLSv1.3": a TLS 1.2 client fails (counted as a
        version failure), a TLS 1.3 one gets through; "TLSv1.2+" takes both
        and refuses TLS 1.1."""
        self.tls_lbd(tls_keys={"protocols": "TLSv1.3"})
        rc, out = s_client(self.tls_addr, "a.lbd.test", ["-tls1_2"])
        self.assertNotEqual(rc, 0, out)
        self.assertNotIn("HTTP/1.1 200", out)
        rc, out = s_client(self.tls_addr, "a.lbd.test", ["-tls1_3"])
        self.assertIn("New, TLSv1.3", out)
        self.assertIn("HTTP/1.1 200 OK", out)
        wait_for(lambda: self.tls_totals()["tls_failures"]["version"] == 1, 10,
                 what="one version failure counted")
        self.lbd.reload(self.config_text.replace(' protocols = "TLSv1.3";', ""))
        rc, out = s_client(self.tls_addr, "a.lbd.test", ["-tls1_2"])
        self.assertIn("New, TLSv1.2", out)
        self.assertIn("HTTP/1.1 200 OK", out)
        rc, out = s_client(self.tls_addr, "a.lbd.test", ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
        self.assertNotIn("HTTP/1.1 200", out)
        rc, out = s_client(self.tls_addr, "a.lbd.test", ["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"])
        self.assertNotIn("HTTP/1.1 200", out)
        self.assertNotEqual(rc, 0, out)

    def test_plain_http_on_tls_port_gets_400_in_clear(self):
        """A plain HTTP request to the TLS port: 400 in clear saying so
        (as nginx), counted as an "http" failure; the worker goes on."""
        self.tls_lbd()
        s = connect(self.tls_addr)
        s.sendall(b"GET / HTTP/1.1\r\nHost: a.lbd.test\r\n\r\n")
        data = recv_until_eof(s)
        s.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data)
        self.assertIn(b"plain HTTP request sent to a TLS port", data)
        wait_for(lambda: self.tls_totals()["tls_failures"]["http"] == 1, 10,
                 what="the http failure counted")
        self.assertEqual(self.curl()[0], 200)

    def test_garbage_client_hello_closes_and_worker_goes_on(self):
        """Random bytes, a truncated ClientHello and a ClientHello with a
        broken length: each connection is closed (no answer in clear), the
        failures are counted, and the workers stay up and serve."""
        self.tls_lbd()
        hello = self._client_hello()
        broken = bytearray(hello)
        broken[3:5] = b"\xff\xff"           # record length beyond what follows
        bad = bytearray(hello)
        bad[5] = 0x7f                       # not a ClientHello
        payloads = [os.urandom(300) for _ in range(10)] + [hello[:40], bytes(bad)] * 5
        for p in payloads:
            s = connect(self.tls_addr)
            s.sendall(p)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            data = recv_until_eof(s)
            s.close()
            self.assertFalse(data.startswith(b"HTTP/"), data)
        t = wait_for(lambda: (lambda t: t if sum(t["tls_failures"].values()) >= len(payloads)
                              else None)(self.tls_totals()), 10, what="the failures counted")
        self.assertGreaterEqual(t["tls_failures"]["protocol"], 10)
        self.assertEqual(t["tls_handshakes"]["full"], 0)
        self.assertEqual(self.curl()[0], 200)
        self.assertEqual(sum(w["restarts"] for w in self.lbd.snapshot()["workers"]), 0)

    def _client_hello(self):
        """The first flight of a real TLS 1.3 client (Python's ssl), as bytes."""
        ctx = ssl.create_default_context()
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname="a.lbd.test")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return out.read()

    def test_handshake_cut_or_slow_is_bounded(self):
        """A client that sends half a ClientHello and waits is closed after
        client_idle (the handshake's bytes do not restart the clock), and
        counted as a "closed" failure."""
        self.tls_lbd(timeouts={"client_idle": "1s"})
        hello = self._client_hello()
        s = connect(self.tls_addr)
        s.sendall(hello[:20])
        s.settimeout(1.5)
        # Trickle a byte at a time: each arrives before the 1 s timeout.
        closed = False
        deadline = time.monotonic() + 8
        for b in hello[20:]:
            try:
                s.sendall(bytes([b]))
                time.sleep(0.3)
            except OSError:
                closed = True
                break
            if time.monotonic() > deadline:
                break
        if not closed:
            s.settimeout(5)
            try:
                closed = s.recv(1) == b""
            except OSError:
                closed = True
        s.close()
        self.assertTrue(closed, "the trickled handshake was not cut")
        wait_for(lambda: self.tls_totals()["tls_failures"]["closed"] >= 1, 10,
                 what="a closed failure counted")

    CONF_T = """listeners = (
  { address = "127.0.0.1:%(port)d";
    tls = {
      certificates = (
        { cert = "%(cert)s";
          key = "%(key)s"; }
      );
@@
    };
  }
);
pools = ( { name = "web"; servers = ( { address = "127.0.0.1:9"; } ); } );
"""
    CERT_LINE, KEY_LINE = 5, 6

    def test_config_errors_name_file_and_line(self):
        """lbd -t: an unreadable certificate or key, a key of another
        certificate, a file that is no PEM, an expired certificate, bad
        protocols, ciphers, rotation, ALPN and HSTS, redirect_https on a TLS
        listener: each an error with the FILE:LINE of its setting."""
        junk = os.path.join(self.tmp, "junk.pem")
        with open(junk, "w") as f:
            f.write("not a certificate\n")
        expired = self.pki.cert("old.lbd.test", ["old.lbd.test"], expired=True)
        cert, key = self.a
        missing = os.path.join(self.tmp, "missing")
        cases = [
            (missing + ".pem", key, self.CERT_LINE, "cannot read certificate"),
            (cert, missing + ".key", self.KEY_LINE, "cannot read key"),
            (cert, self.b[1], self.KEY_LINE, "does not match"),
            (junk, key, self.CERT_LINE, "not a PEM certificate"),
            (cert, junk, self.KEY_LINE, "not a usable PEM private key"),
            (expired[0], expired[1], self.CERT_LINE, "expired"),
        ]
        for c, k, line, what in cases:
            text = (self.CONF_T % {"port": free_port(), "cert": c, "key": k}).replace("@@\n", "")
            self._expect_t_error(text, line, what)
        base = self.CONF_T % {"port": free_port(), "cert": cert, "key": key}
        for key_line, what in [('      protocols = "TLSv1.1";', "unknown protocols"),
                               ('      ciphers = "NO-SUCH-CIPHER";', "no usable cipher"),
                               ('      ticket_rotation = "10ms";', "ticket_rotation"),
                               ('      alpn = [ "h2" ];', "alpn"),
                               ('      hsts = "max-age=1\\r\\nX: y";', "hsts")]:
            text = base.replace("@@", key_line)
            self._expect_t_error(text, text.split("\n").index(key_line) + 1, what)
        text = base.replace("@@\n", "").replace("    tls = {", "    redirect_https = true;\n    tls = {")
        self._expect_t_error(text, 3, "redirect_https")
        # And the good one passes.
        path = self.write_file(self.path("ok.conf"), base.replace("@@\n", ""))
        self.assertEqual(run([self.lbd_bin, "-t", "-c", path]).returncode, 0)

    def _expect_t_error(self, text, line, what):
        path = self.write_file(self.path("t.conf"), text)
        r = run([self.lbd_bin, "-t", "-c", path])
        err = r.stderr.decode("utf-8", "replace")
        self.assertEqual(r.returncode, 1, f"accepted:\n{text}\n{err}")
        self.assertIn(f"{os.path.realpath(path)}:{line}: ", err, f"{what}:\n{text}")
        self.assertIn(what, err)

    def test_reload_with_a_bad_certificate_keeps_serving(self):
        """HUP with a key that does not match: the reload is refused with
        FILE:LINE in the log and the running lbd serves on with its
        certificate. New contents in the same files are read on the next
        good HUP."""
        site = (os.path.join(self.tmp, "site.pem"), os.path.join(self.tmp, "site.key"))
        shutil.copy(self.a[0], site[0])
        shutil.copy(self.a[1], site[1])
        self.tls_lbd(certs=[site])
        text = self.config_text
        bad = text.replace(f'key = "{site[1]}"', f'key = "{self.b[1]}"')
        before = self.lbd.log_size()
        self.lbd.reload(bad, expect_ok=False)
        self.lbd.wait_log(r"reload failed, keeping the running configuration: .*:\d+: key .* "
                          r"does not match", since=before)
        status, head, _ = self.curl()
        self.assertEqual(status, 200, head)
        rc, out = s_client(self.tls_addr, "a.lbd.test")
        self.assertEqual(peer_subject(out), "CN = a.lbd.test")
        shutil.copy(self.b[0], site[0])
        shutil.copy(self.b[1], site[1])
        self.lbd.reload(text)
        rc, out = s_client(self.tls_addr, "a.lbd.test")
        self.assertEqual(peer_subject(out), "CN = b.lbd.test", out[-2000:])
        self.assertEqual(self.curl(host="b.lbd.test")[0], 200)

    def test_status_and_metrics_show_tls(self):
        """lbd -s and /status list each TLS listener's certificates
        (subject, notAfter) and ticket keys; /metrics has the handshake
        counters by result and reason and passes promtool."""
        self.tls_lbd(admin=True)
        self.assertEqual(self.curl()[0], 200)
        st = admin_status(self.admin_addr)
        self.assertEqual(len(st["tls"]), 1)
        t = st["tls"][0]
        self.assertEqual(t["listener"], self.tls_addr)
        self.assertEqual([c["subject"] for c in t["certificates"]],
                         ["CN=a.lbd.test", "CN=b.lbd.test"])
        now = time.time()
        for c in t["certificates"]:
            self.assertTrue(now < c["not_after_s"] < now + 2 * 86400, c)
            self.assertRegex(c["not_after"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(t["ticket_keys"], 1)
        m = admin_metrics(self.admin_addr)
        self.assertEqual(m.types.get("lbd_tls_handshakes_total"), "counter")
        self.assertGreaterEqual(m.value("lbd_tls_handshakes_total", result="full"), 1)
        self.assertEqual(m.value("lbd_tls_handshake_failures_total", reason="http"), 0)
        self.assertEqual(len(m.select("lbd_tls_certificate_expiry_timestamp_seconds")), 2)
        text = admin_metrics_text(self.admin_addr)
        r = run([PROMTOOL, "check", "metrics"], input=text.encode())
        out = (r.stdout + r.stderr).decode()
        self.assertEqual((r.returncode, out), (0, ""), "promtool check metrics")

    def test_resumption_across_workers(self):
        """4 workers: a session saved by s_client -sess_out resumes on each
        of 20 new connections (-sess_in), whichever worker takes it; lbd -s
        shows resumed handshakes on more than one worker."""
        self.tls_lbd(workers=4)
        sess = os.path.join(self.tmp, "sess.pem")
        rc, out = s_client(self.tls_addr, "a.lbd.test", ["-sess_out", sess])
        self.assertIn("New, TLSv1.3", out)
        self.assertTrue(os.path.exists(sess), out[-2000:])
        reused = tickets = 0
        for _ in range(20):
            rc, out = s_client(self.tls_addr, "a.lbd.test", ["-sess_in", sess])
            self.assertIn("HTTP/1.1 200 OK", out)
            reused += "Reused, TLSv1.3" in out
            # A new ticket each time: OpenSSL's clients (curl, wrk) use a
            # TLS 1.3 ticket once and would make every other connection a
            # full handshake without one.
            tickets += "Post-Handshake New Session Ticket arrived" in out
        self.assertEqual((reused, tickets), (20, 20))
        snap = self.lbd.snapshot()
        per = [w["tls_handshakes"]["resumed"] for w in snap["workers"] if w["state"] == "running"]
        self.assertEqual(sum(per), 20)
        self.assertGreater(sum(1 for n in per if n > 0), 1, per)
        # TLS 1.2 tickets too.
        sess12 = os.path.join(self.tmp, "sess12.pem")
        s_client(self.tls_addr, "a.lbd.test", ["-tls1_2", "-sess_out", sess12])
        for _ in range(4):
            rc, out = s_client(self.tls_addr, "a.lbd.test", ["-tls1_2", "-sess_in", sess12])
            self.assertIn("Reused, TLSv1.2", out)

    def test_clients_that_use_a_ticket_once_resume_every_time(self):
        """A client that keeps only the last ticket it got (each used once)
        resumes on every connection: curl over 10 connections in one run
        (its session cache) makes one full handshake."""
        self.tls_lbd()
        h, port = self.tls_addr.rsplit(":", 1)
        url = f"https://a.lbd.test:{port}/"
        args = [CURL, "-sS", "--cacert", self.pki.ca, "--resolve", f"a.lbd.test:{port}:{h}",
                "-H", "Connection: close", "-w", "%{http_code}\n"]
        r = run(args + ["-o", "/dev/null"] * 10 + [url] * 10)
        codes = r.stdout.decode().split()
        self.assertEqual(codes, ["200"] * 10, r.stderr)
        t = self.tls_totals()["tls_handshakes"]
        self.assertEqual((t["full"], t["resumed"]), (1, 9))

    def test_no_session_tickets(self):
        """session_tickets = false: no ticket, every connection a full
        handshake."""
        self.tls_lbd(tls_keys={"session_tickets": False})
        sess = os.path.join(self.tmp, "sess.pem")
        rc, out = s_client(self.tls_addr, "a.lbd.test", ["-sess_out", sess])
        self.assertIn("HTTP/1.1 200 OK", out)
        self.assertNotIn("Post-Handshake New Session Ticket arrived", out)
        if os.path.exists(sess):
            rc, out = s_client(self.tls_addr, "a.lbd.test", ["-sess_in", sess])
            self.assertIn("New, TLSv1.3", out)
        self.assertEqual(self.tls_totals()["tls_handshakes"]["resumed"], 0)

    def test_alpn(self):
        """ALPN: http/1.1 is chosen when offered; a client offering only h2
        gets no ALPN answer and goes on."""
        self.tls_lbd()
        rc, out = s_client(self.tls_addr, "a.lbd.test", ["-alpn", "h2,http/1.1"])
        self.assertIn("ALPN protocol: http/1.1", out)
        rc, out = s_client(self.tls_addr, "a.lbd.test", ["-alpn", "h2"])
        self.assertIn("No ALPN negotiated", out)
        self.assertIn("HTTP/1.1 200 OK", out)


class TlsEdgeTest(TlsCase):
    """Unknown SNI names, bad handshakes and what they leave, early data."""

    def test_unknown_sni_refused(self):
        """unknown_sni = "refuse": a name no certificate has gets the alert
        unrecognized_name (counted: tls_failures "sni", tls_unknown_sni);
        known names and clients without SNI are served."""
        self.tls_lbd(tls_keys={"unknown_sni": "refuse"})
        rc, out = s_client(self.tls_addr, "nope.lbd.test")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("unrecognized name", out)
        self.assertNotIn("HTTP/1.1 200", out)
        rc, out = s_client(self.tls_addr, "b.lbd.test")
        self.assertIn("HTTP/1.1 200 OK", out)
        self.assertEqual(peer_subject(out), "CN = b.lbd.test")
        rc, out = s_client(self.tls_addr, None)
        self.assertIn("HTTP/1.1 200 OK", out)
        self.assertEqual(peer_subject(out), "CN = a.lbd.test")
        t = self.tls_totals()
        self.assertEqual((t["tls_failures"]["sni"], t["tls_unknown_sni"]), (1, 1))
        self.assertEqual(t["tls_handshakes"]["full"], 2)

    def test_unknown_sni_default_serves_the_first_certificate(self):
        """By default a name no certificate has gets the first certificate,
        and is counted in tls_unknown_sni (not as a failure)."""
        self.tls_lbd()
        rc, out = s_client(self.tls_addr, "nope.lbd.test")
        self.assertIn("HTTP/1.1 200 OK", out)
        self.assertEqual(peer_subject(out), "CN = a.lbd.test")
        t = self.tls_totals()
        self.assertEqual((t["tls_failures"]["sni"], t["tls_unknown_sni"]), (0, 1))

    def _fds(self, pid):
        return len(os.listdir(f"/proc/{pid}/fd"))

    def test_bad_handshakes_leak_no_fd(self):
        """200 handshakes that fail in five ways (garbage, plain HTTP, a
        cut ClientHello, an unknown name refused, TLS 1.2 to a TLS 1.3
        port) leave the worker with the fds it had before, and every one is
        counted."""
        self.tls_lbd(workers=1, tls_keys={"unknown_sni": "refuse", "protocols": "TLSv1.3"})
        self.assertIn("HTTP/1.1 200 OK", s_client(self.tls_addr, "a.lbd.test")[1])
        pid = self.lbd.worker_pids()[0]
        before = self._fds(pid)
        hello = TlsTest._client_hello(self)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx12 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx12.check_hostname = False
        ctx12.verify_mode = ssl.CERT_NONE
        ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
        for i in range(200):
            s = connect(self.tls_addr)
            s.settimeout(10)
            kind = i % 5
            try:
                if kind == 0:
                    s.sendall(os.urandom(200))
                elif kind == 1:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                elif kind == 2:
                    s.sendall(hello[:60])
                    s.close()
                    continue
                else:
                    try:
                        (ctx if kind == 3 else ctx12).wrap_socket(
                            s, server_hostname="nope.lbd.test" if kind == 3 else "a.lbd.test")
                        self.fail("handshake succeeded")
                    except (ssl.SSLError, OSError):
                        pass
                    s.close()
                    continue
                s.shutdown(socket.SHUT_WR)
                recv_until_eof(s)
            except OSError:
                pass
            s.close()

        def failures():
            f = self.tls_totals()["tls_failures"]
            return f if sum(f.values()) >= 200 else None
        f = wait_for(failures, 20, what="200 failures counted")
        self.assertEqual((f["http"], f["sni"], f["version"]), (40, 40, 40), f)
        wait_for(lambda: self._fds(pid) == before, 10,
                 what=f"the worker's fds back to {before} (now {self._fds(pid)})")
        self.assertEqual(self.lbd.worker_pids()[0], pid)
        self.assertIn("HTTP/1.1 200 OK", s_client(self.tls_addr, "a.lbd.test")[1])

    def test_early_data_is_not_accepted(self):
        """TLS 1.3 0-RTT: lbd's tickets allow no early data, so a client
        holding one sends its request after the handshake, never as
        replayable early data: s_client -early_data says it was not sent
        (or rejected), and the backend gets the request once."""
        self.tls_lbd()
        sess = os.path.join(self.tmp, "sess.pem")
        rc, out = s_client(self.tls_addr, "a.lbd.test", ["-sess_out", sess])
        self.assertIn("New, TLSv1.3", out)
        self.assertNotIn("Max Early Data: 1", out)
        early = self.write_file(self.path("early.txt"),
                                "GET /?early=1 HTTP/1.1\r\nHost: a.lbd.test\r\n\r\n")
        rc, out = s_client(self.tls_addr, "a.lbd.test",
                           ["-sess_in", sess, "-early_data", early], request=False)
        self.assertIn("Reused, TLSv1.3", out)
        self.assertRegex(out, r"Early data was (not sent|rejected)")
        self.assertNotIn("Early data was accepted", out)


class TicketTest(TlsCase):
    """Session ticket keys in shm, rotated by the control process."""

    def rotations(self):
        return self.lbd.snapshot()["tls"][0]["ticket_rotations"]

    def resume(self, sess):
        rc, out = s_client(self.tls_addr, "a.lbd.test", ["-sess_in", sess])
        self.assertIn("HTTP/1.1 200 OK", out)
        return "Reused, TLSv1.3" in out

    def test_rotation_keeps_two_previous_keys(self):
        """ticket_rotation = "2s": a ticket made under one key still resumes
        after one and two rotations (the previous keys decrypt), and no
        longer after a third (its key is gone); lbd -s counts the
        rotations and the keys kept."""
        self.tls_lbd(tls_keys={"ticket_rotation": "2s"})
        sess = os.path.join(self.tmp, "sess.pem")
        for _ in range(5):      # saved within one key's time, known which
            r0 = self.rotations()
            rc, out = s_client(self.tls_addr, "a.lbd.test", ["-sess_out", sess])
            if self.rotations() == r0:
                break
        self.assertIn("New, TLSv1.3", out)
        for k in (1, 2):
            wait_for(lambda: self.rotations() >= r0 + k, 15, what=f"rotation {k}")
            reused = self.resume(sess)
            if self.rotations() - r0 <= 2:
                self.assertTrue(reused, f"not resumed after {k} rotation(s)")
        self.assertEqual(self.lbd.snapshot()["tls"][0]["ticket_keys"], 3)
        wait_for(lambda: self.rotations() >= r0 + 3, 15, what="rotation 3")
        self.assertFalse(self.resume(sess), "resumed with a key that should be gone")
        self.lbd.wait_log(r"listener 127\.0\.0\.1:\d+: session ticket keys rotated")

    def test_keys_survive_reload_and_control_respawn(self):
        """The keys live in shm: a session resumes after a reload (new
        workers, new control process) and after the control process was
        killed and respawned, with no rotation in between."""
        self.expect_worker_deaths()
        self.tls_lbd(workers=2)
        sess = os.path.join(self.tmp, "sess.pem")
        s_client(self.tls_addr, "a.lbd.test", ["-sess_out", sess])
        self.assertTrue(self.resume(sess))
        before = self.lbd.snapshot()
        self.lbd.reload()
        after = self.lbd.snapshot()
        self.assertTrue(set(w["pid"] for w in after["workers"] if w["state"] == "running")
                        .isdisjoint(w["pid"] for w in before["workers"]))
        self.assertTrue(self.resume(sess))
        ctl = wait_control(self.lbd)
        os.kill(ctl, signal.SIGKILL)
        wait_control(self.lbd, not_pid=ctl)
        self.assertTrue(self.resume(sess))
        self.assertEqual(self.rotations(), 0)


class RedirectHstsTest(TlsCase):
    """redirect_https on a plain listener, hsts on a TLS one."""

    def start(self, redirect=None, hsts=None):
        """REDIRECT: the plain listener's redirect_https (None: the TLS
        listener's port)."""
        text = self.tls_lbd(plain=True, start=False,
                            tls_keys={"hsts": hsts} if hsts else None)
        if redirect is None:
            redirect = self.tls_addr.rsplit(":", 1)[1]
        text = with_listener_keys(text, self.plain_addr, f"redirect_https = {redirect};")
        return self.start_lbd(text, self.tls_addr)

    def test_redirect_https_308(self):
        """Every request to a redirect_https listener gets 308 to the same
        host (port dropped) and target over https on the configured port,
        keep-alive kept; ACME HTTP-01 challenge paths are proxied as usual;
        curl -L follows it to the backend over TLS."""
        from lbdtest import HttpConn
        self.start()
        tls_port = int(self.tls_addr.rsplit(":", 1)[1])
        with HttpConn(self.plain_addr) as c:
            for target, host, want in [
                    ("/a/b?x=1&y=%20", "a.lbd.test:8080", f"https://a.lbd.test:{tls_port}/a/b?x=1&y=%20"),
                    ("/", "B.lbd.test", f"https://B.lbd.test:{tls_port}/"),
                    ("/v6", "[::1]:8080", f"https://[::1]:{tls_port}/v6"),
                    ("http://c.lbd.test:81/abs?q", "ignored.test", f"https://c.lbd.test:{tls_port}/abs?q"),
                    ("*", "a.lbd.test", f"https://a.lbd.test:{tls_port}/")]:
                r = c.request(target, host=host, method="OPTIONS" if target == "*" else "GET")
                self.assertEqual(r.status, 308, r)
                self.assertEqual(r.header("Location"), want)
                self.assertIsNone(r.header("Connection"))      # kept alive
                self.assertIsNone(r.header("Strict-Transport-Security"))
            # The challenge path goes to the backend, on the same connection.
            r = c.request("/.well-known/acme-challenge/tok3n", host="a.lbd.test")
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.backend, "b1")
            r = c.request("/.well-known/acme-challenge", host="a.lbd.test")
            self.assertEqual(r.status, 308, r)
        self.assertEqual(self.backend.stats()["heads"], 1)
        # A body that was not read: 308, then the connection is closed.
        with HttpConn(self.plain_addr) as c:
            r = c.request("/up", host="a.lbd.test", method="POST", body=b"x" * 100)
            self.assertEqual(r.status, 308, r)
            self.assertEqual(r.header("Connection"), "close")
        # HTTP/1.0 without Host: nowhere to redirect to.
        from lbdtest import raw_exchange, parse_status
        self.assertEqual(parse_status(raw_exchange(self.plain_addr, b"GET / HTTP/1.0\r\n\r\n")), 400)
        h, port = self.plain_addr.rsplit(":", 1)
        r = run([CURL, "-sS", "-L", "--cacert", self.pki.ca, "--resolve",
                 f"a.lbd.test:{port}:{h}", "--resolve", f"a.lbd.test:{tls_port}:{h}",
                 "-o", "/dev/null", "-w", "%{http_code} %{url_effective} %{num_redirects}",
                 f"http://a.lbd.test:{port}/followed?echo=1"])
        self.assertEqual(r.stdout.decode(),
                         f"200 https://a.lbd.test:{tls_port}/followed?echo=1 1", r.stderr)
        self.assertEqual(self.lbd.snapshot()["totals"]["tls_handshakes"]["full"], 1)

    def test_redirect_to_443_drops_the_port(self):
        """redirect_https = true: https on its default port, no port in the
        Location."""
        self.start("true")
        from lbdtest import http_get
        r = http_get(self.plain_addr, "/x?y", host="www.lbd.test:8080")
        self.assertEqual(r.status, 308)
        self.assertEqual(r.header("Location"), "https://www.lbd.test/x?y")

    def test_hsts_on_tls_answers(self):
        """hsts on a TLS listener: every answer over it carries exactly one
        Strict-Transport-Security with the configured value (lbd's own
        answers too, and replacing the backend's), answers over plain HTTP
        none."""
        self.start("false", hsts="max-age=31536000; includeSubDomains")
        want = "strict-transport-security: max-age=31536000; includeSubDomains"
        for path in ("/", "/?sts=1", "/?status=503", "/?size=100000&chunked=1"):
            status, head, body = self.curl(path)
            self.assertIsNotNone(status, head)
            sts = [l for l in head.split("\r\n") if l.lower().startswith("strict-transport-security:")]
            self.assertEqual([s.lower() for s in sts], [want.lower()], head)
            self.assertIn("max-age=31536000; includeSubDomains", sts[0])
        # lbd's own answer (no route for the pool? a 404 needs routes: use 400).
        ctx = ssl.create_default_context(cafile=self.pki.ca)
        with ctx.wrap_socket(connect(self.tls_addr), server_hostname="a.lbd.test") as s:
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")        # no Host: 400 from lbd
            data = b""
            while b"\r\n\r\n" not in data:
                d = s.recv(4096)
                if not d:
                    break
                data += d
        self.assertIn(b" 400 ", data.split(b"\r\n")[0])
        self.assertIn(b"\r\nStrict-Transport-Security: max-age=31536000; includeSubDomains\r\n", data)
        from lbdtest import http_get
        r = http_get(self.plain_addr, "/?sts=1")
        self.assertEqual(r.header("Strict-Transport-Security"), "max-age=5")    # the backend's


# Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS): the kernel's receive time of
# what a recvmsg() returns, as a struct timespec.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def recv_stamped(sock, size=65536):
    """(data, receive time in ns) of one recvmsg() on SOCK, which has
    SO_TIMESTAMPNS on: the kernel's clock when the data arrived (None for
    data that came before the kernel had its stamps switched on)."""
    data, anc, _, _ = sock.recvmsg(size, socket.CMSG_SPACE(16))
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
            sec, nsec = struct.unpack("qq", raw[:16])
            return data, sec * 10**9 + nsec
    return data, None


class StampedBackend:
    """A keep-alive backend that records the kernel's arrival time of each
    request head (SO_TIMESTAMPNS) and answers 200 "ok"."""

    def __init__(self):
        self.arrivals = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        buf = b""
        with c:
            while True:
                try:
                    data, ts = recv_stamped(c)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, _, buf = buf.partition(b"\r\n\r\n")
                    self.arrivals.append(ts)
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def stop(self):
        self.sock.close()


def tcp_queues(port):
    """{(state, remote port): rx queue} of the IPv4 sockets bound to local
    PORT, from /proc/net/tcp (a listener's rx queue: its accept queue)."""
    out = {}
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.split(":")[1], 16) != port:
                continue
            key = (state, int(remote.split(":")[1], 16))
            out[key] = out.get(key, 0) + int(fields[4].split(":")[1], 16)
    return out


class TlsAcceptTest(TlsCase):

    def queued_burst(self, ka, req, n):
        """Queue N TLS connections (their ClientHello sent) while the worker
        is stopped, let it run, and as soon as the first server flight
        comes back send REQ on the kept connection KA: (arrival stamps of
        the N first flights, time REQ was sent). The response is read."""
        port = int(self.tls_addr.rsplit(":", 1)[1])
        worker = self.lbd.worker_pids()[0]
        hellos = []
        hello_ctx = ssl.create_default_context()
        os.kill(worker, signal.SIGSTOP)
        try:
            for _ in range(n):
                s = connect(self.tls_addr)
                self.addCleanup(s.close)
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                out = ssl.MemoryBIO()
                obj = hello_ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="a.lbd.test")
                with self.assertRaises(ssl.SSLWantReadError):
                    obj.do_handshake()
                s.sendall(out.read())
                hellos.append(s)
            wait_for(lambda: tcp_queues(port).get(("0A", 0), 0) == n, 10,
                     what="the handshakes queued")
        finally:
            os.kill(worker, signal.SIGCONT)
        self.assertTrue(select.select(hellos, [], [], 10)[0], "no handshake ran")
        ka.sendall(req)
        sent = time.time_ns()      # the request is in the worker's socket now
        self.assertEqual(TlsTest._read_response(ka)[1], b"ok")
        flights = []
        for s in hellos:
            s.settimeout(10)
            data, ts = recv_stamped(s)
            self.assertEqual(data[:1], b"\x16", "no ServerHello")
            self.assertIsNotNone(ts, "no receive timestamp")
            flights.append(ts)
            s.close()
        return flights, sent

    def test_queued_handshakes_do_not_hold_up_a_keepalive_request(self):
        """A burst of queued TLS handshakes under way and the next request
        of an established keep-alive client arriving in its midst: the
        worker forwards the request after at most a handshake or two, not
        at the end of the burst (a TLS listener accepts one connection per
        wakeup, and a handshake runs at its accept). Order, not time: the
        kernel's arrival stamps of the server's first flights (at the
        clients) and of the request (at the backend). Before the change
        the whole queue was accepted and its handshakes run in one go, the
        request waiting for the rest of them (about 100 of 128 here)."""
        n = 128
        backend = StampedBackend()
        self.addCleanup(backend.stop)
        self.tls_addr = f"127.0.0.1:{free_port()}"
        text = lbd_config([self.tls_addr], [{"name": "web", "servers": [(backend.addr, 1)]}],
                          workers=1, timeouts={"client_idle": "60s"})
        text = with_listener_keys(text, self.tls_addr, tls_block([self.a]))
        self.start_lbd(text, self.tls_addr, workers=1)
        ctx = ssl.create_default_context(cafile=self.pki.ca)
        req = b"GET / HTTP/1.1\r\nHost: a.lbd.test\r\n\r\n"
        ka = ctx.wrap_socket(connect(self.tls_addr), server_hostname="a.lbd.test")
        self.addCleanup(ka.close)
        ka.sendall(req)
        self.assertEqual(TlsTest._read_response(ka)[1], b"ok")
        # Tries again (at most 3 times) if this process woke up too late:
        # the burst over before the request went out, nothing to compare.
        for attempt in range(3):
            flights, sent = self.queued_burst(ka, req, n)
            self.assertEqual(len(backend.arrivals), 2 + attempt)
            forwarded = backend.arrivals[-1]
            self.assertIsNotNone(forwarded, "no receive timestamp")
            if any(ts > sent for ts in flights):
                break
        else:
            self.skipTest("the request never went out during a burst")
        waited = sum(1 for ts in flights if sent < ts < forwarded)
        self.assertLessEqual(waited, 3, f"the request waited for {waited} handshakes (of {n}, "
                             f"{sum(1 for ts in flights if ts > sent)} after it arrived)")


class TlsLoadTest(TlsCase):

    def test_reloads_under_tls_load_lose_no_request(self):
        """wrk over TLS (keep-alive, 16 connections) and a client making a
        new TLS connection (full handshake) per request, while lbd reloads:
        no request fails (the drain of old workers applies to TLS
        connections as to plain ones)."""
        self.tls_lbd(workers=2)
        wrk = subprocess.Popen(["wrk", "-t2", "-c16", "-d12s", "--timeout", "5s",
                                f"https://{self.tls_addr}/"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        stop = threading.Event()
        results = {"ok": 0, "errors": []}
        ctx = ssl.create_default_context(cafile=self.pki.ca)

        def one_by_one():
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    with ctx.wrap_socket(connect(self.tls_addr), server_hostname="a.lbd.test") as s:
                        s.sendall(b"GET / HTTP/1.1\r\nHost: a.lbd.test\r\nConnection: close\r\n\r\n")
                        data = recv_until_eof(s)
                    if not data.startswith(b"HTTP/1.1 200 ") or not data.endswith(b"\n"):
                        results["errors"].append(data[:200])
                    else:
                        results["ok"] += 1
                except Exception as e:  # noqa: BLE001 - recorded
                    results["errors"].append(repr(e))
        t = threading.Thread(target=one_by_one, daemon=True)
        t.start()
        reloads = 0
        try:
            requests = lambda: self.tls_totals()["requests"]
            wait_for(lambda: requests() > 300, 15, what="load under way")
            for i in range(6):
                if wrk.poll() is not None:
                    break
                self.lbd.reload()
                reloads += 1
                n = requests()
                wait_for(lambda: requests() > n + 300 or wrk.poll() is not None, 15,
                         what="requests after the reload")
        finally:
            stop.set()
            t.join(30)
            out = wrk.communicate(timeout=60)[0].decode("utf-8", "replace")
        self.assertGreaterEqual(reloads, 3, out)
        self.assertEqual(results["errors"], [])
        self.assertGreater(results["ok"], 10)
        m = re.search(r"(\d+) requests in", out)
        self.assertTrue(m and int(m.group(1)) > 1000, out)
        self.assertNotRegex(out, r"Socket errors: .*[1-9]", out)
        self.assertNotIn("Non-2xx", out)
