"""Proxying: keep-alive, header rewriting, bodies, errors, malformed input."""
import socket
import unittest

import lbdtest
from lbdtest import (HttpConn, LbdTestCase, free_port, http_get, lbd_config, parse_status,
                     pattern_body, raw_exchange, split_hostport)


class KeepAliveTest(LbdTestCase):

    def test_client_and_upstream_keepalive(self):
        """Many requests over one client connection: one client TCP
        connection serves them all, and lbd reuses one pooled backend
        connection (same X-Conn-Id, X-Conn-Seq counting up)."""
        (b,) = self.start_backends("b1")
        lbd = self.simple_lbd([b], workers=2)
        base = lbd.snapshot()["totals"]
        n = 10
        with HttpConn(lbd.listen) as c:
            local = c.local_port()
            rs = []
            for i in range(n):
                r = c.request(f"/?i={i}")
                self.assertEqual(r.status, 200, r)
                self.assertIsNone(r.header("Connection"), "no Connection: close on keep-alive")
                rs.append(r)
            self.assertEqual(c.local_port(), local)
            self.assertFalse(c.eof)
        conn_ids = {r.header("X-Conn-Id") for r in rs}
        self.assertEqual(len(conn_ids), 1, f"one upstream connection, got ids {conn_ids}")
        seqs = [int(r.header("X-Conn-Seq")) for r in rs]
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + n)), "X-Conn-Seq increases by one")
        totals = lbd.snapshot()["totals"]
        self.assertEqual(totals["connections"] - base["connections"], 1,
                         "one client connection served every request")
        self.assertEqual(totals["requests"] - base["requests"], n)
        st = b.stats()
        self.assertEqual(st["connections"] - 1, 1, "the backend saw one connection from lbd "
                         f"(plus the /stats one): {st}")

    def test_pipelined_requests(self):
        """Two requests sent in one write are both answered, in order."""
        (b,) = self.start_backends("b1")
        lbd = self.simple_lbd([b], workers=1)
        with HttpConn(lbd.listen) as c:
            c.send(b"GET /?size=10 HTTP/1.1\r\nHost: x\r\n\r\n"
                   b"GET /?size=20 HTTP/1.1\r\nHost: x\r\n\r\n")
            r1 = c.read_response()
            r2 = c.read_response()
        self.assertEqual((r1.status, r1.body), (200, pattern_body(10)))
        self.assertEqual((r2.status, r2.body), (200, pattern_body(20)))


class BackendPoolTest(LbdTestCase):
    """The keep-alive pool to the backends: "auto" (the default) keeps as
    many idle connections as were busy at once lately, `keepalive = N` at
    most N. Counted on the backend (connections it accepted, open now)."""

    CLIENTS = 40
    ROUNDS = 10

    def setUp(self):
        super().setUp()
        (self.b,) = self.start_backends("b1")

    def pool_lbd(self, nofile=None, **pool):
        port = free_port()
        listen = f"127.0.0.1:{port}"
        cfg = lbd_config(listen, [dict(name="web", servers=[(self.b.addr, 1)], **pool)], workers=1)
        return self.start_lbd(cfg, listen, workers=1, nofile=nofile)

    def load(self, lbd, clients=CLIENTS, rounds=ROUNDS):
        """CLIENTS keep-alive connections each send a request, all at once
        (the backend holds each 100 ms, so they are in flight together), then
        read the answers; ROUNDS times. Returns (connections the backend
        accepted, requests it served) meanwhile."""
        before = self.b.stats()
        conns = [HttpConn(lbd.listen) for _ in range(clients)]
        try:
            for _ in range(rounds):
                for c in conns:
                    c.send(b"GET /?delay=100 HTTP/1.1\r\nHost: lbd.test\r\n\r\n")
                for c in conns:
                    r = c.read_response()
                    self.assertEqual(r.status, 200, r)
        finally:
            for c in conns:
                c.close()
        after = self.b.stats()
        # Less the /stats exchange of `after` itself.
        return (after["connections"] - before["connections"] - 1,
                after["requests"] - before["requests"] - 1)

    def test_default_pool_keeps_what_the_load_needs(self):
        """Default config, 40 clients with 40 requests in flight at once:
        the backend sees about 40 connections for 400 requests (with the old
        fixed default of 32 idle per server, 8 were closed and reopened at
        every round: 112)."""
        lbd = self.pool_lbd()
        conns, reqs = self.load(lbd)
        self.assertEqual(reqs, self.CLIENTS * self.ROUNDS)
        self.assertLessEqual(conns, self.CLIENTS + 10,
                             f"{conns} backend connections for {reqs} requests")

    def test_fixed_keepalive_churns_beyond_it(self):
        """keepalive = 2 keeps 2: the 38 others are closed after each round
        and reopened at the next."""
        lbd = self.pool_lbd(keepalive=2)
        conns, reqs = self.load(lbd)
        self.assertEqual(reqs, self.CLIENTS * self.ROUNDS)
        self.assertGreaterEqual(conns, 3 * self.CLIENTS,
                                f"only {conns} backend connections for {reqs} requests")

    def test_auto_pool_shrinks_after_the_load(self):
        """Once the load is gone the allowance decays, and the idle
        connections close, although backend_idle (1 h) would keep them."""
        lbd = self.pool_lbd(timeouts={"backend_idle": "1h"})
        conns, _ = self.load(lbd, clients=16, rounds=3)
        self.assertLessEqual(conns, 16 + 10)
        # Only the /stats connection itself is left open at the backend.
        lbdtest.wait_for(lambda: self.b.stats()["active"] <= 1, timeout=30,
                         what="the idle backend connections to close")
        self.assertServes(lbd)

    def test_idle_connections_bounded_by_fd_limit(self):
        """With an fd limit of 96 a worker keeps idle backend connections in
        all to a quarter of what its fd budget leaves for connections (about
        20, logged at start), whatever the load had in flight: of 30
        connections the others are closed after each round (the old fixed 32
        per server kept all 30)."""
        clients = 30
        lbd = self.pool_lbd(nofile=(96, 96))
        m = lbd.wait_log(r"idle backend connections in what they leave \(at most (\d+)\)")
        idle = int(m.group(1))
        self.assertLessEqual(idle, 96 // 4)
        conns, reqs = self.load(lbd, clients=clients)
        self.assertEqual(reqs, clients * self.ROUNDS)
        self.assertGreaterEqual(conns, clients + (clients - idle) * (self.ROUNDS - 1),
                                f"only {conns} backend connections for {reqs} requests")
        # The idle ones and this /stats exchange.
        self.assertLessEqual(self.b.stats()["active"], idle + 1)


class HeadersTest(LbdTestCase):

    def test_forwarded_and_hop_by_hop_headers(self):
        """The backend sees Host as sent, X-Forwarded-For: 127.0.0.1 (the
        client's own replaced), X-Forwarded-Proto: http, and no hop-by-hop
        header (Connection, Keep-Alive, TE, Upgrade, Proxy-Connection, the
        headers Connection names)."""
        (b,) = self.start_backends("b1")
        lbd = self.simple_lbd([b], workers=1)
        req = (b"GET /?echo=1 HTTP/1.1\r\n"
               b"Host: Example.TEST:8080\r\n"
               b"X-Forwarded-For: 6.6.6.6\r\n"
               b"X-Forwarded-Proto: https\r\n"
               b"Connection: keep-alive, X-Secret\r\n"
               b"Keep-Alive: timeout=5\r\n"
               b"X-Secret: hush\r\n"
               b"TE: trailers\r\n"
               b"Upgrade: h2c\r\n"
               b"Proxy-Connection: keep-alive\r\n"
               b"X-Keep: yes\r\n"
               b"Accept: */*\r\n"
               b"\r\n")
        with HttpConn(lbd.listen) as c:
            c.send(req)
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        head = r.body.decode("latin-1")
        self.assertTrue(head.startswith("GET /?echo=1 HTTP/1.1\r\n"), head)
        self.assertTrue(head.endswith("\r\n\r\n"), head)
        fields = [ln.split(":", 1) for ln in head.split("\r\n")[1:] if ln]
        names = [k.strip().lower() for k, _ in fields]
        values = {k.strip().lower(): v.strip() for k, v in fields}

        self.assertEqual(values.get("host"), "Example.TEST:8080", "Host is kept as sent")
        self.assertEqual(names.count("x-forwarded-for"), 1, head)
        self.assertEqual(values.get("x-forwarded-for"), "127.0.0.1", head)
        self.assertEqual(names.count("x-forwarded-proto"), 1, head)
        self.assertEqual(values.get("x-forwarded-proto"), "http", head)
        self.assertEqual(values.get("x-keep"), "yes")
        self.assertEqual(values.get("accept"), "*/*")
        for hop in ("connection", "keep-alive", "x-secret", "te", "upgrade", "proxy-connection"):
            self.assertNotIn(hop, names, f"hop-by-hop header {hop} forwarded:\n{head}")

    def test_hop_by_hop_response_headers_dropped(self):
        """A backend's Connection: close is not passed on as such: the
        client's keep-alive connection survives a backend that closes."""
        (b,) = self.start_backends("b1")
        lbd = self.simple_lbd([b], workers=1)
        with HttpConn(lbd.listen) as c:
            r1 = c.request("/?close=1")
            self.assertEqual(r1.status, 200, r1)
            self.assertIsNone(r1.header("Connection"), r1.headers)
            r2 = c.request("/")
            self.assertEqual(r2.status, 200, r2)
            self.assertNotEqual(r1.header("X-Conn-Id"), r2.header("X-Conn-Id"),
                                "the closed backend connection was not reused")


class BodyTest(LbdTestCase):

    def setUp(self):
        super().setUp()
        (self.b,) = self.start_backends("b1")
        self.simple_lbd([self.b], workers=2)

    def test_request_body_content_length(self):
        """A 1 MB POST body with Content-Length reaches the backend whole
        (http.client, a stock client, on one keep-alive connection)."""
        import http.client
        host, port = split_hostport(self.lbd.listen)
        body = pattern_body(1 << 20)
        c = http.client.HTTPConnection(host, port, timeout=30)
        try:
            for _ in range(2):
                c.request("POST", "/upload", body=body,
                          headers={"Content-Type": "application/octet-stream"})
                r = c.getresponse()
                r.read()
                self.assertEqual(r.status, 200)
                self.assertEqual(r.getheader("X-Body-Bytes"), str(len(body)))
        finally:
            c.close()
        # The same over the raw client.
        r = http_get(self.lbd.listen, "/upload", method="POST", body=body, timeout=30)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("X-Body-Bytes"), str(len(body)))

    def test_request_body_chunked(self):
        """A chunked request body reaches the backend whole."""
        chunks = [b"a" * 1000, b"b" * 70000, b"c" * 5]
        data = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        for ch in chunks:
            data += b"%x\r\n%s\r\n" % (len(ch), ch)
        data += b"0\r\n\r\n"
        with HttpConn(self.lbd.listen) as c:
            c.send(data)
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.header("X-Body-Bytes"), str(sum(map(len, chunks))))

    def test_chunked_response(self):
        """?chunked=1&size=100000 arrives whole and chunked."""
        with HttpConn(self.lbd.listen) as c:
            r = c.request("/?chunked=1&size=100000")
            self.assertEqual(r.status, 200, r)
            self.assertEqual((r.header("Transfer-Encoding") or "").lower(), "chunked")
            self.assertEqual(len(r.body), 100000)
            self.assertEqual(r.body, pattern_body(100000))
            # The connection is still usable: the chunked framing ended right.
            r2 = c.request("/")
            self.assertEqual(r2.status, 200, r2)

    def test_large_response(self):
        """?size=5000000 arrives with the right length and content."""
        with HttpConn(self.lbd.listen, timeout=30) as c:
            r = c.request("/?size=5000000")
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.header("Content-Length"), "5000000")
            self.assertEqual(len(r.body), 5000000)
            self.assertTrue(r.body == pattern_body(5000000), "body content differs")
            r2 = c.request("/")
            self.assertEqual(r2.status, 200, r2)

    def test_curl_large_download(self):
        """The same through curl, a real client (checks what it writes)."""
        import subprocess
        out = self.path("dl")
        p = subprocess.run(["curl", "-sS", "-o", out, "-w", "%{http_code} %{size_download}",
                            "--max-time", "30", f"http://{self.lbd.listen}/?size=3000000"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout.decode(), "200 3000000")
        with open(out, "rb") as f:
            self.assertTrue(f.read() == pattern_body(3000000))

    def test_head_request(self):
        """HEAD gets the length a GET would have, and no body."""
        with HttpConn(self.lbd.listen) as c:
            r = c.request("/?size=1234", method="HEAD")
            self.assertEqual(r.status, 200, r)
            self.assertEqual(r.header("Content-Length"), "1234")
            r2 = c.request("/?size=7")
            self.assertEqual(r2.body, pattern_body(7), "no stray body bytes after HEAD")


class ErrorsTest(LbdTestCase):
    """Each error class, and the (single) worker goes on serving after it."""

    def setUp(self):
        super().setUp()
        (self.b,) = self.start_backends("good")
        self.dead = f"127.0.0.1:{free_port()}"      # nothing listens there
        port = free_port()
        listen = f"127.0.0.1:{port}"
        cfg = lbd_config(listen, [
            {"name": "web", "servers": [(self.b.addr, 1)]},
            {"name": "dead", "servers": [(self.dead, 1)]},
            {"name": "zero", "strategy": "weighted_round_robin",
             "servers": [(self.b.addr, 0), (self.dead, 0)]},
        ], routes=[("web.test", "/", "web"), ("dead.test", "/", "dead"),
                   ("zero.test", "/", "zero")],
            workers=1, timeouts={"backend_response": "1s", "connect": "2s"})
        self.start_lbd(cfg, listen, workers=1)
        self.pid0 = self.lbd.worker_pids()[0]

    def check_still_serving(self):
        r = self.get("/", host="web.test")
        self.assertEqual((r.status, r.backend), (200, "good"), r)
        self.assertEqual(self.lbd.worker_pids().get(0), self.pid0, "the worker did not die")

    def check_error(self, status, target, host):
        r = self.get(target, host=host)
        self.assertEqual(r.status, status, f"{host}{target}: {r!r} {r.body!r}")
        self.check_still_serving()
        # The same on a kept-alive connection, then a good request on it.
        with HttpConn(self.lbd.listen) as c:
            ok = c.request("/", host="web.test")
            self.assertEqual(ok.status, 200, ok)
            r = c.request(target, host=host)
            self.assertEqual(r.status, status, r)
            if (r.header("Connection") or "").lower() != "close":
                r2 = c.request("/", host="web.test")
                self.assertEqual(r2.status, 200, r2)
        self.check_still_serving()
        return r

    def test_502_nothing_listens(self):
        self.check_error(502, "/", "dead.test")

    def test_502_backend_reset(self):
        self.check_error(502, "/?reset=1", "web.test")

    def test_502_backend_drop(self):
        self.check_error(502, "/?drop=1", "web.test")

    def test_503_all_weights_zero(self):
        self.check_error(503, "/", "zero.test")

    def test_504_backend_hangs(self):
        self.check_error(504, "/?hang=1", "web.test")

    def test_404_no_route(self):
        self.check_error(404, "/", "elsewhere.test")

    def test_slow_upload_is_not_a_backend_timeout(self):
        """backend_response runs from "request sent" (etc/lbd.conf): a client
        pausing mid-body longer than backend_response (1 s here) but within
        the client timeouts is not answered 504, nor counted against the
        backend, which was only waiting for the body."""
        import time
        with HttpConn(self.lbd.listen, timeout=15) as c:
            c.send(b"POST /up HTTP/1.1\r\nHost: web.test\r\nContent-Length: 10\r\n\r\n12345")
            time.sleep(2.0)
            try:
                c.send(b"67890")
            except OSError:
                pass        # lbd already gave up; the response says why
            r = c.read_response()
        self.assertEqual(r.status, 200, f"{r!r} {r.body!r}")
        self.assertEqual(r.header("X-Body-Bytes"), "10")
        snap = self.lbd.snapshot()
        (web,) = [s for p in snap["pools"] if p["name"] == "web" for s in p["servers"]]
        self.assertEqual(web["failures"], 0, web)

    def test_error_counters(self):
        """Errors show in the snapshot: 5xx/4xx classes, server failures."""
        for target, host in (("/", "dead.test"), ("/?reset=1", "web.test"),
                             ("/", "zero.test"), ("/", "nowhere.test")):
            self.get(target, host=host)
        snap = self.lbd.snapshot()
        (w,) = [w for w in snap["workers"] if w["state"] == "running"]
        self.assertEqual(w["responses"]["5xx"], 3, w)
        self.assertEqual(w["responses"]["4xx"], 1, w)
        servers = {(p["name"], s["address"]): s for p in snap["pools"] for s in p["servers"]}
        self.assertGreaterEqual(servers[("dead", self.dead)]["failures"], 1)
        self.assertGreaterEqual(servers[("web", self.b.addr)]["failures"], 1)
        self.assertEqual(servers[("zero", self.b.addr)]["requests"], 0)


class MalformedTest(LbdTestCase):
    """Bad requests over raw sockets: the right 4xx, then the worker goes on."""

    def setUp(self):
        super().setUp()
        (self.b,) = self.start_backends("b1")
        self.simple_lbd([self.b], workers=1)
        self.pid0 = self.lbd.worker_pids()[0]

    def check(self, data, status):
        raw = raw_exchange(self.lbd.listen, data, timeout=15)
        self.assertEqual(parse_status(raw), status, f"request {data[:120]!r}...\nanswer {raw[:300]!r}")
        head = raw.split(b"\r\n\r\n", 1)[0].lower()
        self.assertIn(b"connection: close", head, "lbd closes after a bad request")
        r = self.get("/")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.lbd.worker_pids().get(0), self.pid0, "the worker did not die")
        return raw

    def test_content_length_and_chunked(self):
        self.check(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n", 400)

    def test_space_before_colon(self):
        self.check(b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad : 1\r\n\r\n", 400)

    def test_missing_host(self):
        self.check(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400)

    def test_bad_request_line(self):
        self.check(b"THIS IS NOT HTTP\r\n\r\n", 400)
        self.check(b"GET /\r\nHost: a\r\n\r\n", 400)

    def test_duplicate_content_length(self):
        self.check(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                   b"Content-Length: 6\r\n\r\nhello!", 400)

    def test_obs_fold(self):
        self.check(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n continued\r\n\r\n", 400)

    def test_request_line_too_long(self):
        self.check(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414)

    def test_request_line_too_long_partial(self):
        """A request line past 8 KiB is refused before it even ends."""
        self.check(b"GET /" + b"a" * 9000, 414)

    def test_header_block_too_large(self):
        hdrs = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(40))
        self.check(b"GET / HTTP/1.1\r\nHost: a\r\n" + hdrs + b"\r\n", 431)

    def test_too_many_headers(self):
        hdrs = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
        self.check(b"GET / HTTP/1.1\r\nHost: a\r\n" + hdrs + b"\r\n", 431)

    def test_unsupported_version_and_method(self):
        self.check(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505)
        self.check(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", 501)

    def test_lingering_close_is_bounded(self):
        """After an error response lbd reads and drops what the client still
        sends (lingering close), but not forever: a client that keeps
        trickling bytes is cut off within a bounded time (lbd lingers
        5 s, LB_LINGER_MS; 15 s is allowed here)."""
        import time
        with HttpConn(self.lbd.listen, timeout=5) as c:
            c.send(b"BAD REQUEST LINE\r\n\r\n")
            r = c.read_response()
            self.assertEqual(r.status, 400)
            deadline = time.monotonic() + 15
            cut = False
            while time.monotonic() < deadline:
                try:
                    c.send(b"x")
                except OSError:     # EPIPE / ECONNRESET: lbd closed the socket
                    cut = True
                    break
                time.sleep(0.25)
            self.assertTrue(cut, "lbd still holds the connection of a client that trickles "
                            "bytes 15 s after answering 400")
        self.assertServes()

    def test_malformed_counted(self):
        """Bad requests count as 4xx responses."""
        self.check(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400)
        snap = self.lbd.snapshot()
        self.assertEqual(sum(w["responses"]["4xx"] for w in snap["workers"]), 1)
        self.assertEqual(sum(w["responses"]["2xx"] for w in snap["workers"]), 1)


class RoutingTest(LbdTestCase):

    def test_route_specificity(self):
        """Exact host beats *.suffix beats *, then the longest path_prefix;
        hosts match case-insensitively without port; no route: 404."""
        names = ["any", "any_api", "suffix", "deep_suffix", "exact", "exact_v2"]
        bs = dict(zip(names, self.start_backends(*names)))
        port = free_port()
        listen = f"127.0.0.1:{port}"
        cfg = lbd_config(listen, [{"name": n, "servers": [(b.addr, 1)]} for n, b in bs.items()],
                         routes=[("*", "/", "any"), ("*", "/api", "any_api"),
                                 ("*.example.com", "/", "suffix"),
                                 ("*.b.example.com", "/", "deep_suffix"),
                                 ("api.example.com", "/", "exact"),
                                 ("api.example.com", "/v2", "exact_v2")], workers=2)
        self.start_lbd(cfg, listen, workers=2)
        cases = [
            ("other.test", "/x", "any"),
            ("other.test", "/api/x", "any_api"),
            ("www.example.com", "/api/x", "suffix"),        # host beats path
            ("example.com", "/", "any"),                    # *.x is not the apex
            ("a.b.example.com", "/", "deep_suffix"),        # longer suffix wins
            ("x.a.example.com", "/", "suffix"),
            ("api.example.com", "/", "exact"),
            ("api.example.com", "/v2/users", "exact_v2"),
            ("API.Example.COM:8080", "/v2", "exact_v2"),     # case, port
            ("api.example.com", "/api", "exact"),
        ]
        for host, path, want in cases:
            r = self.get(path, host=host)
            self.assertEqual((r.status, r.backend), (200, want), f"Host {host} {path}")

    def test_no_route_404(self):
        (b,) = self.start_backends("b1")
        port = free_port()
        listen = f"127.0.0.1:{port}"
        cfg = lbd_config(listen, [{"name": "web", "servers": [(b.addr, 1)]}],
                         routes=[("only.test", "/app", "web")], workers=1)
        self.start_lbd(cfg, listen, workers=1)
        self.assertEqual(self.get("/app/x", host="only.test").status, 200)
        self.assertEqual(self.get("/other", host="only.test").status, 404)
        self.assertEqual(self.get("/app", host="else.test").status, 404)
        self.assertEqual(b.stats()["requests"], 2, "404s never reach a backend")


class TimeoutsTest(LbdTestCase):

    def setUp(self):
        super().setUp()
        (self.b,) = self.start_backends("b1")
        self.simple_lbd([self.b], workers=1,
                        timeouts={"client_header": "1s", "client_idle": "2s"})

    def test_client_header_timeout_408(self):
        """A head not complete within client_header: 408, then close."""
        for partial in (b"G", b"GET / HTTP/1.1\r\nHost: a\r\n"):
            raw = raw_exchange(self.lbd.listen, partial, timeout=15)
            self.assertEqual(parse_status(raw), 408, raw)
        self.assertServes()

    def test_client_idle_timeout_closes(self):
        """An idle keep-alive connection is closed after client_idle."""
        with HttpConn(self.lbd.listen, timeout=15) as c:
            self.assertEqual(c.request("/").status, 200)
            self.assertEqual(c.read_until_eof(), b"", "closed without a word")
        self.assertServes()

    def test_upstream_keepalive_zero(self):
        """keepalive = 0: no pooled backend connections."""
        port = free_port()
        listen = f"127.0.0.1:{port}"
        cfg = lbd_config(listen, [{"name": "web", "keepalive": 0, "servers": [(self.b.addr, 1)]}],
                         workers=1)
        lbd = self.start_lbd(cfg, listen, workers=1, name="ka0.conf")
        with HttpConn(lbd.listen) as c:
            ids = [c.request("/").header("X-Conn-Id") for _ in range(3)]
        self.assertEqual(len(set(ids)), 3, ids)


class HalfCloseTest(LbdTestCase):

    def test_half_closed_client_gets_response(self):
        """A client that sends its request and then shuts down its sending
        side (RFC 9112 9.6) still gets the whole response: lbd must flush
        what it queued before closing. Five tries each, as the loss depends
        on event order. (A keep-alive HTTP/1.1 client whose FIN arrives
        before the answer gets a 100 Continue first: the probe that tells a
        half-close from a close.)"""
        (b,) = self.start_backends("b1")
        lbd = self.simple_lbd([b], workers=1)
        cases = [
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"b1\n"),
            (b"GET /?delay=200 HTTP/1.1\r\nHost: a\r\n\r\n", b"b1\n"),
            (b"GET /?size=300000 HTTP/1.1\r\nHost: a\r\n\r\n", pattern_body(300000)),
            (b"GET /?size=10 HTTP/1.0\r\n\r\n", pattern_body(10)),
        ]
        failures = []
        for req, body in cases:
            for _ in range(5):
                raw = raw_exchange(lbd.listen, req, shut_write=True)
                probe = b"HTTP/1.1 100 Continue\r\n\r\n"
                if b"HTTP/1.1\r\n" in req and raw.startswith(probe):
                    raw = raw[len(probe):]
                head, _, got = raw.partition(b"\r\n\r\n")
                if parse_status(raw) != 200 or got != body:
                    line = req.split(b"\r\n")[0]
                    failures.append(f"{line!r}: status {parse_status(raw)}, "
                                    f"{len(raw)} bytes received, body {len(got)}/{len(body)}")
        self.assertEqual(failures, [], "responses lost or cut after the client's half-close")

    def test_half_closed_client_gets_error_response(self):
        """The same for a response lbd writes itself (400)."""
        (b,) = self.start_backends("b1")
        lbd = self.simple_lbd([b], workers=1)
        for _ in range(5):
            raw = raw_exchange(lbd.listen, b"GET / HTTP/1.1\r\n\r\n", shut_write=True)
            self.assertEqual(parse_status(raw), 400, raw)


class Ipv6Test(LbdTestCase):

    def test_ipv6_listener(self):
        if not lbdtest.ipv6_loopback_available():
            raise unittest.SkipTest("::1 is not available on this machine")
        (b,) = self.start_backends("b1")
        port = free_port()
        listen = f"[::1]:{port}"
        cfg = lbd_config(listen, [{"name": "web", "servers": [(b.addr, 1)]}], workers=2)
        lbd = self.start_lbd(cfg, listen, workers=2)
        r = http_get(lbd.listen, "/?echo=1", host=f"[::1]:{port}")
        self.assertEqual(r.status, 200, r)
        self.assertIn(b"\r\nX-Forwarded-For: ::1\r\n", r.body)
        self.assertIn(f"\r\nHost: [::1]:{port}\r\n".encode(), r.body)
        # Not on IPv4: only the configured address listens.
        with self.assertRaises(OSError):
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.close()
