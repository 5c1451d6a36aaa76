"""Fault injection (worker/fault.c): configured delays, aborts and resets
at their percentages, changed at run time through the admin API, and the
X-Lbd-Fault-* headers on routes that allow them."""
import errno
import re
import socket
import time

from lbdtest import HttpConn, LbdTestCase, free_port, http_get, lbd_config, wait_for
from lbdextra import admin_metrics, run_requests
from test_api import TOKEN, api


def statuses(results):
    out = {}
    for r in results:
        out[r[0]] = out.get(r[0], 0) + 1
    return out


class FaultTest(LbdTestCase):

    def fault_lbd(self, faults, routes_extra="", workers=2, backends=("a",), access_log=True):
        """lbd with pool 'web' over BACKENDS, FAULTS (libconfig text of the
        list's entries), one '*' route with ROUTES_EXTRA keys, an admin
        listener with TOKEN and an access log."""
        self.bs = self.start_backends(*backends)
        self.listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        self.access = self.path("access.log")
        extra = (f'admin = {{ address = "{self.admin}"; token = "{TOKEN}"; }};\n'
                 + (f'faults = ( {faults} );\n' if faults else "")
                 + (f'access_log = "{self.access}";\n' if access_log else ""))
        pools = [{"name": "web", "servers": [(b.addr, 1) for b in self.bs]}]
        self.cfg = lbd_config(self.listen, pools, routes=[], workers=workers, extra=extra)
        # lbd_config's routes: ours, with the extra keys.
        self.cfg = self.cfg.replace("routes = (\n\n);",
                                    f'routes = ( {{ host = "*"; path_prefix = "/"; pool = "web"; '
                                    f'{routes_extra} }} );')
        return self.start_lbd(self.cfg, self.listen, workers=workers)

    def backend_requests(self):
        """Requests the backends saw, less our /stats calls (each counts)."""
        self.stats_calls = getattr(self, "stats_calls", 0) + 1
        return sum(b.stats()["requests"] - self.stats_calls for b in self.bs)

    def access_marks(self, name, n):
        """Wait until the access log (flushed every second) has N lines."""
        def probe():
            try:
                with open(self.access) as f:
                    lines = f.read().splitlines()
            except OSError:
                return None
            return lines if len(lines) >= n else None
        lines = wait_for(probe, 10, what=f"{n} access log lines")
        return sum(1 for ln in lines if re.search(rf" fault={re.escape(name)}( |$)", ln))

    def test_abort_percentages_never_reach_the_backend(self):
        """Two aborts on one pool, 20 % (503) and 10 % (502): over 1,000
        requests each within binomial bounds (mean 200, sd 12.6: 140-260;
        mean 100, sd 9.5: 50-150); the backend sees exactly the rest; the
        counter and the access log's fault=NAME match the answers."""
        self.fault_lbd('{ name = "e503"; pool = "web"; percent = 20; abort = 503; },'
                       '{ name = "e502"; pool = "web"; percent = 10; abort = 502; }')
        n = 1000
        got = statuses(run_requests(self.listen, [("/", ())] * n, nthreads=4))
        self.assertEqual(sum(got.values()), n)
        self.assertEqual(set(got) - {200, 502, 503}, set(), got)
        self.assertTrue(140 <= got.get(503, 0) <= 260, got)
        self.assertTrue(50 <= got.get(502, 0) <= 150, got)
        self.assertEqual(self.backend_requests(), got[200])
        m = admin_metrics(self.admin)
        self.assertEqual(m.value("lbd_faults_injected_total", fault="e503", type="abort"), got[503])
        self.assertEqual(m.value("lbd_faults_injected_total", fault="e502", type="abort"), got[502])
        self.assertEqual(self.access_marks("e503", n), got[503])
        self.assertEqual(self.access_marks("e502", n), got[502])

    def test_runtime_percent_and_enabled(self):
        """At 0 % nothing happens; PUT {"percent": 100} (token) makes every
        request fail, {"enabled": false} none, DELETE goes back to the
        file's 0 %; GET /api/faults shows file and runtime values; lbd -s
        too. Changes need the token."""
        lbd = self.fault_lbd('{ name = "errors"; pool = "web"; percent = 0; abort = 503; }')
        self.assertEqual(statuses(run_requests(self.listen, [("/", ())] * 100)), {200: 100})
        path = "/api/faults/errors"
        self.assertEqual(api(self.admin, path, "PUT", {"percent": 100})[0], 401)
        self.assertEqual(api(self.admin, path, "PUT", {"percent": 101}, TOKEN)[0], 400)
        self.assertEqual(api(self.admin, path, "PUT", {"enabled": "no"}, TOKEN)[0], 400)
        self.assertEqual(api(self.admin, "/api/faults/nope", "PUT", {"percent": 1}, TOKEN)[0], 404)
        st, doc, _ = api(self.admin, path, "PUT", {"percent": 100}, TOKEN)
        self.assertEqual(st, 200)
        self.assertEqual(doc["runtime"], {"percent": 100, "enabled": True})
        self.assertEqual(doc["file"], {"percent": 0, "enabled": True})
        self.assertEqual((doc["type"], doc["status"], doc["pool"]), ("abort", 503, "web"))
        before = self.backend_requests()
        self.assertEqual(statuses(run_requests(self.listen, [("/", ())] * 50)), {503: 50})
        self.assertEqual(self.backend_requests(), before)
        st, doc, _ = api(self.admin, path, "PUT", {"enabled": False}, TOKEN)
        self.assertEqual(doc["runtime"], {"percent": 100, "enabled": False})
        self.assertEqual(statuses(run_requests(self.listen, [("/", ())] * 50)), {200: 50})
        f = lbd.snapshot()["faults"][0]
        self.assertEqual((f["name"], f["percent"], f["enabled"], f["injected"]),
                         ("errors", 100, False, 50))
        st, doc, _ = api(self.admin, "/api/faults")
        self.assertEqual([x["name"] for x in doc["faults"]], ["errors"])
        self.assertEqual(doc["faults"][0]["injected"], 50)
        api(self.admin, path, "DELETE", None, TOKEN)
        st, doc, _ = api(self.admin, path)
        self.assertEqual(doc["runtime"], {"percent": 0, "enabled": True})
        self.assertIsNone(doc["percent_override"])

    def test_runtime_percents_of_a_pool_stay_within_100(self):
        """A pool's faults share one draw: PUT may not take their live
        shares past 100 % (409, nothing changed); a disabled fault counts
        for nothing, so enabling it again is what is refused then."""
        self.fault_lbd('{ name = "a"; pool = "web"; percent = 60; abort = 503; },'
                       '{ name = "b"; pool = "web"; percent = 30; abort = 502; }')
        st, doc, _ = api(self.admin, "/api/faults/b", "PUT", {"percent": 50}, TOKEN)
        self.assertEqual(st, 409, doc)
        self.assertIn("110", doc["message"])
        self.assertEqual(api(self.admin, "/api/faults/b")[1]["runtime"]["percent"], 30)
        self.assertEqual(api(self.admin, "/api/faults/b", "PUT", {"percent": 40}, TOKEN)[0], 200)
        self.assertEqual(api(self.admin, "/api/faults/a", "PUT", {"enabled": False}, TOKEN)[0], 200)
        self.assertEqual(api(self.admin, "/api/faults/b", "PUT", {"percent": 100}, TOKEN)[0], 200)
        self.assertEqual(api(self.admin, "/api/faults/a", "PUT", {"enabled": True}, TOKEN)[0], 409)
        got = statuses(run_requests(self.listen, [("/", ())] * 20))
        self.assertEqual(got, {502: 20})

    def test_runtime_percent_survives_reload(self):
        """A runtime percent stays over a reload (the fault is found again
        by its name)."""
        lbd = self.fault_lbd('{ name = "errors"; pool = "web"; percent = 0; abort = 503; }')
        api(self.admin, "/api/faults/errors", "PUT", {"percent": 100}, TOKEN)
        lbd.reload()
        st, doc, _ = api(self.admin, "/api/faults/errors")
        self.assertEqual(doc["runtime"]["percent"], 100)
        self.assertEqual(statuses(run_requests(self.listen, [("/", ())] * 20)), {503: 20})

    def test_delay(self):
        """A 300 ms delay at 100 %: each request takes at least that long,
        and still reaches the backend."""
        self.fault_lbd('{ name = "slow"; pool = "web"; percent = 100; delay = "300ms"; }')
        for _ in range(3):
            t0 = time.monotonic()
            r = http_get(self.listen, "/")
            took = time.monotonic() - t0
            self.assertEqual(r.status, 200)
            self.assertGreaterEqual(took, 0.3)
        self.assertEqual(self.backend_requests(), 3)
        m = admin_metrics(self.admin)
        self.assertEqual(m.value("lbd_faults_injected_total", fault="slow", type="delay"), 3)

    def test_reset(self):
        """reset at 100 %: the client's connection is reset (ECONNRESET, no
        answer) and the backend never sees the request."""
        self.fault_lbd('{ name = "drop"; pool = "web"; percent = 100; reset = true; }')
        for _ in range(3):
            s = socket.create_connection(tuple(self.listen.rsplit(":", 1)[0:1]) +
                                         (int(self.listen.rsplit(":", 1)[1]),), timeout=10)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with self.assertRaises(ConnectionResetError):
                data = s.recv(65536)
                # A FIN (b"") instead of a RST would be a failure too.
                raise AssertionError(f"no reset: read {data!r}")
            s.close()
        self.assertEqual(self.backend_requests(), 0)
        m = admin_metrics(self.admin)
        self.assertEqual(m.value("lbd_faults_injected_total", fault="drop", type="reset"), 3)

    def test_headers_only_where_allowed(self):
        """faults_from_headers = true: X-Lbd-Fault-Abort answers its status
        without reaching the backend, X-Lbd-Fault-Delay delays; a bad value
        is ignored. Without the key the headers change nothing."""
        self.fault_lbd("", routes_extra="faults_from_headers = true;")
        r = http_get(self.listen, "/", headers=[("X-Lbd-Fault-Abort", "418")])
        self.assertEqual(r.status, 418)
        self.assertEqual(self.backend_requests(), 0)
        t0 = time.monotonic()
        r = http_get(self.listen, "/", headers=[("X-Lbd-Fault-Delay", "250")])
        self.assertEqual(r.status, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.25)
        r = http_get(self.listen, "/", headers=[("X-Lbd-Fault-Delay", "200"),
                                                 ("X-Lbd-Fault-Abort", "503")])
        self.assertEqual(r.status, 503)
        r = http_get(self.listen, "/", headers=[("X-Lbd-Fault-Abort", "99")])
        self.assertEqual(r.status, 200)
        self.assertEqual(self.backend_requests(), 2)
        m = admin_metrics(self.admin)
        self.assertEqual(m.value("lbd_faults_injected_total", fault="headers", type="abort"), 2)
        self.assertEqual(m.value("lbd_faults_injected_total", fault="headers", type="delay"), 2)

    def test_headers_ignored_by_default(self):
        """A route without faults_from_headers forwards the headers and
        injects nothing."""
        self.fault_lbd("")
        r = http_get(self.listen, "/", headers=[("X-Lbd-Fault-Abort", "503")])
        self.assertEqual(r.status, 200)
        self.assertEqual(self.backend_requests(), 1)
        m = admin_metrics(self.admin)
        self.assertEqual(m.value("lbd_faults_injected_total", fault="headers", type="abort"), 0)

    def pipelined(self, *requests):
        """REQUESTS sent in one write on one connection, the last with
        Connection: close; everything lbd answered, up to its close."""
        raw = b""
        for i, (method, headers) in enumerate(requests):
            last = i == len(requests) - 1
            raw += (f"{method} / HTTP/1.1\r\nHost: x\r\n{headers}"
                    f"{'Connection: close' + chr(13) + chr(10) if last else ''}\r\n").encode()
        host, port = self.listen.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(raw)
            out = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk

    def test_abort_without_body_keeps_framing(self):
        """An abort to a HEAD request, or with a status that has no content
        (204, 304), is a head alone: the next answer on the connection
        starts right after it (a body there would be read as the start of
        the next answer: the client and lbd would disagree on framing)."""
        self.fault_lbd("", routes_extra="faults_from_headers = true;")
        for method, status in (("GET", 204), ("GET", 304), ("HEAD", 503), ("HEAD", 200)):
            out = self.pipelined((method, f"X-Lbd-Fault-Abort: {status}\r\n"), ("GET", ""))
            head, sep, rest = out.partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(f"HTTP/1.1 {status} ".encode()), out)
            self.assertNotIn(b"connection: close", head.lower(), out)
            self.assertTrue(rest.startswith(b"HTTP/1.1 200 "), (method, status, out))
            if status in (204, 304):
                self.assertNotIn(b"content-length", head.lower(), out)
        self.assertEqual(self.backend_requests(), 4)
