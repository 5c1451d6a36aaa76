"""Sticky sessions by cookie (pools[].sticky): lbd's cookie pins a client to
the server that first answered it. Real backends; what reached each one is
told by its X-Backend header and its echo of the request head (echo=1);
what lbd decided by its Set-Cookie and the sticky counters of /status and
/metrics. No timing assertions."""
import base64
import hashlib
import hmac
import re
import subprocess
import threading

from lbdtest import HttpConn, LbdTestCase, free_port, http_get, lbd_config, wait_for
from lbdextra import admin_metrics, admin_metrics_text, admin_status, kill_backend, wait_health

SECRET = "0123456789abcdef-sticky-test-secret"


def cookie_value(pool, address, secret=SECRET):
    """The cookie value README documents: the first 96 bits of
    HMAC-SHA256(secret, "lbd-sticky-v1" NUL pool NUL address), base64url."""
    mac = hmac.new(secret.encode(), b"lbd-sticky-v1\0" + pool.encode() + b"\0" + address.encode(),
                   hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:12]).decode()


def set_cookie(r, name="lbd_srv"):
    """lbd's Set-Cookie line in response R, or None (several: an error)."""
    mine = [v for v in r.header_all("Set-Cookie") if v.startswith(name + "=")]
    assert len(mine) <= 1, mine
    return mine[0] if mine else None


def pinned(r, name="lbd_srv"):
    """The value lbd's Set-Cookie gives in R."""
    line = set_cookie(r, name)
    assert line is not None, f"no Set-Cookie {name} in {r!r}: {r.headers}"
    return line.split(";", 1)[0].split("=", 1)[1]


class StickyTest(LbdTestCase):

    def _lbd(self, backends, sticky=None, weights=None, strategy="round_robin", workers=2,
             more=None, name="lbd.conf"):
        listen = f"127.0.0.1:{free_port()}"
        admin = f"127.0.0.1:{free_port()}"
        st = {"secret": SECRET}
        st.update(sticky or {})
        weights = weights or [1] * len(backends)
        pool = {"name": "web", "strategy": strategy, "sticky": st,
                "servers": [(b.addr, w) for b, w in zip(backends, weights)]}
        pool.update(more or {})
        cfg = lbd_config(listen, [pool], workers=workers, admin=admin)
        lbd = self.start_lbd(cfg, listen, workers=workers, name=name)
        lbd.admin = admin
        lbd.cfg_pool = pool
        return lbd

    def _sticky(self, lbd, pool="web"):
        p = [p for p in admin_status(lbd.admin)["pools"] if p["name"] == pool]
        return p[0]["sticky"]

    def _get(self, lbd, cookie=None, target="/"):
        return self.get(target, lbd=lbd, headers=[("Cookie", cookie)] if cookie else ())

    def test_pinning(self):
        """Three servers, round robin. A first request gets a cookie naming
        the server that answered (HttpOnly, SameSite=Lax, Path=/ by default;
        no address in it; the documented HMAC); 50 requests with it, on new
        connections and on one keep-alive connection, all go to that server
        and get no Set-Cookie back. Each server has its own value. Counted as
        50 hits in /status, lbd -s and /metrics."""
        b = self.start_backends("b1", "b2", "b3")
        lbd = self._lbd(b)
        first = [self._get(lbd) for _ in range(3)]
        self.assertEqual(sorted(r.backend for r in first), ["b1", "b2", "b3"], first)
        by_name = {b_.name: b_ for b_ in b}
        for r in first:
            line = set_cookie(r)
            self.assertRegex(line, r"^lbd_srv=[A-Za-z0-9_-]{16}; Path=/; HttpOnly; SameSite=Lax$")
            self.assertEqual(pinned(r), cookie_value("web", by_name[r.backend].addr))
            self.assertNotIn("127.0.0.1", line)
        self.assertEqual(len({pinned(r) for r in first}), 3)

        r0 = first[1]
        value = pinned(r0)
        got = [self._get(lbd, f"lbd_srv={value}") for _ in range(25)]
        with HttpConn(lbd.listen) as c:
            for _ in range(25):
                got.append(c.request("/", headers=[("Cookie", f"other=1; lbd_srv={value}")]))
        self.assertEqual({(r.status, r.backend) for r in got}, {(200, r0.backend)})
        self.assertEqual([r for r in got if set_cookie(r) is not None], [])

        self.assertEqual(self._sticky(lbd), {"hits": 50, "repins": 0, "invalid": 0})
        snap = lbd.snapshot()
        self.assertEqual(snap["pools"][0]["sticky"]["hits"], 50)
        m = admin_metrics(lbd.admin)
        self.assertEqual(m.value("lbd_sticky_hits_total", pool="web"), 50)
        self.assertEqual(m.value("lbd_sticky_repins_total", pool="web"), 0)
        self.assertEqual(m.value("lbd_sticky_invalid_total", pool="web"), 0)
        r = subprocess.run(["/usr/bin/promtool", "check", "metrics"],
                           input=admin_metrics_text(lbd.admin).encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual((r.returncode, r.stdout.decode(errors="replace").strip()), (0, ""))

    def test_attributes(self):
        """Every attribute as configured, in the Set-Cookie line."""
        b1, = self.start_backends("b1")
        lbd = self._lbd([b1], {"cookie": "SRV", "max_age": "1h", "secure": True,
                               "httponly": False, "samesite": "None", "path": "/app",
                               "domain": "example.com"})
        r = self._get(lbd)
        self.assertEqual(set_cookie(r, "SRV"),
                         f"SRV={cookie_value('web', b1.addr)}; Path=/app; Domain=example.com; "
                         "Max-Age=3600; Secure; SameSite=None")

    def test_repin_when_down(self):
        """The pinned server fails its health check: a request with its
        cookie goes to another server and gets a cookie naming that one,
        which then pins the client there."""
        b = self.start_backends("b1", "b2", "b3")
        hc = {"path": "/", "interval": "100ms", "timeout": "500ms", "rise": 1, "fall": 1}
        lbd = self._lbd(b, more={"health_check": hc})
        r = self._get(lbd)
        old, victim = pinned(r), [x for x in b if x.name == r.backend][0]
        kill_backend(victim)
        wait_health(lbd.admin, victim.addr, "down")
        r2 = self._get(lbd, f"lbd_srv={old}")
        self.assertEqual(r2.status, 200)
        self.assertNotEqual(r2.backend, victim.name)
        new = pinned(r2)
        self.assertNotEqual(new, old)
        self.assertEqual(new, cookie_value("web", [x for x in b if x.name == r2.backend][0].addr))
        again = [self._get(lbd, f"lbd_srv={new}") for _ in range(10)]
        self.assertEqual({(x.status, x.backend, set_cookie(x)) for x in again},
                         {(200, r2.backend, None)})
        self.assertEqual(self._sticky(lbd), {"hits": 10, "repins": 1, "invalid": 0})
        self.assertEqual(admin_metrics(lbd.admin).value("lbd_sticky_repins_total", pool="web"), 1)

    def test_repin_passive(self):
        """No health check: the pinned server dies; the request with its
        cookie fails to connect there, is retried on another server, and
        its answer carries a cookie naming that one. With the breaker
        opened by that failure, the next request with the old cookie goes
        elsewhere at once (re-pinned by the strategy)."""
        b = self.start_backends("b1", "b2", "b3")
        lbd = self._lbd(b, more={"retries": {"attempts": 2},
                                 "circuit_breaker": {"failures": 1, "open": "1h",
                                                     "open_max": "1h"}})
        r = self._get(lbd)
        old, victim = pinned(r), [x for x in b if x.name == r.backend][0]
        kill_backend(victim)
        r2 = self._get(lbd, f"lbd_srv={old}")
        self.assertEqual(r2.status, 200)
        self.assertNotEqual(r2.backend, victim.name)
        self.assertEqual(pinned(r2),
                         cookie_value("web", [x for x in b if x.name == r2.backend][0].addr))
        r3 = self._get(lbd, f"lbd_srv={old}")
        self.assertEqual(r3.status, 200)
        self.assertNotEqual(r3.backend, victim.name)
        self.assertIsNotNone(set_cookie(r3))
        self.assertEqual(self._sticky(lbd)["repins"], 1, "r3: the breaker was open")

    def test_repin_when_full(self):
        """The pinned server is at its max_requests (a request hangs there):
        a request with its cookie goes to another server and is re-pinned,
        rather than wait; once the place is free the new cookie holds."""
        b1, b2 = self.start_backends("b1", "b2")
        listen = f"127.0.0.1:{free_port()}"
        pool = {"name": "web", "sticky": {"secret": SECRET},
                "servers": [(b.addr, 1, {"max_requests": 1}) for b in (b1, b2)]}
        lbd = self.start_lbd(lbd_config(listen, [pool]), listen)
        v1 = cookie_value("web", b1.addr)
        held = []
        t = threading.Thread(target=lambda: held.append(
            self.get("/?delay=1500", headers=[("Cookie", f"lbd_srv={v1}")])))
        t.start()
        try:
            lbd.wait_in_flight(1)
            r = self.get("/", headers=[("Cookie", f"lbd_srv={v1}")])
            self.assertEqual((r.status, r.backend, pinned(r)),
                             (200, "b2", cookie_value("web", b2.addr)))
        finally:
            t.join(30)
        self.assertEqual((held[0].status, held[0].backend, set_cookie(held[0])), (200, "b1", None))
        self.assertEqual(lbd.snapshot()["pools"][0]["sticky"],
                         {"hits": 1, "repins": 1, "invalid": 0})

    def test_weight_zero_drains(self):
        """A reload gives the pinned server weight 0: it keeps the clients
        its cookie pins (no new Set-Cookie), and gets no new one."""
        b = self.start_backends("b1", "b2", "b3")
        lbd = self._lbd(b)
        r = self._get(lbd)
        value, drained = pinned(r), r.backend
        weights = [0 if x.name == drained else 1 for x in b]
        pool = dict(lbd.cfg_pool, servers=[(x.addr, w) for x, w in zip(b, weights)])
        lbd.reload(lbd_config(lbd.listen, [pool], workers=2, admin=lbd.admin))
        kept = [self._get(lbd, f"lbd_srv={value}") for _ in range(20)]
        self.assertEqual({(x.status, x.backend, set_cookie(x)) for x in kept},
                         {(200, drained, None)})
        fresh = [self._get(lbd) for _ in range(30)]
        self.assertEqual({x.status for x in fresh}, {200})
        self.assertNotIn(drained, {x.backend for x in fresh})
        self.assertEqual(len([x for x in fresh if set_cookie(x)]), 30)
        self.assertEqual(self._sticky(lbd)["hits"], 20)

    def test_admin_drain_keeps_sessions_maint_repins(self):
        """The admin API's runtime states (issue 17) meet the cookie: a
        server put in drain keeps the clients its cookie pins and gets no
        new one; put in maint it keeps nobody, its clients are re-pinned
        with a new cookie; ready again, its old cookie works again."""
        import json
        b = self.start_backends("b1", "b2", "b3")
        listen = f"127.0.0.1:{free_port()}"
        admin = f"127.0.0.1:{free_port()}"
        pool = {"name": "web", "strategy": "round_robin", "sticky": {"secret": SECRET},
                "servers": [(x.addr, 1) for x in b]}
        token = "sticky-admin-token"
        cfg = lbd_config(listen, [pool], workers=2,
                         extra=f'admin = {{ address = "{admin}"; token = "{token}"; }};')
        lbd = self.start_lbd(cfg, listen, workers=2)
        lbd.admin = admin
        r = self._get(lbd)
        value, mine = pinned(r), [x for x in b if x.name == r.backend][0]

        def state(s):
            put = http_get(admin, f"/api/pools/web/servers/{mine.addr}", method="PUT",
                           host="admin.test", body=json.dumps({"state": s}).encode(),
                           headers=[("Authorization", f"Bearer {token}"),
                                    ("Content-Type", "application/json")])
            self.assertEqual(put.status, 200, put.body)

        state("drain")
        kept = [self._get(lbd, f"lbd_srv={value}") for _ in range(10)]
        self.assertEqual({(x.status, x.backend, set_cookie(x)) for x in kept},
                         {(200, mine.name, None)})
        fresh = [self._get(lbd) for _ in range(12)]
        self.assertEqual({x.status for x in fresh}, {200})
        self.assertNotIn(mine.name, {x.backend for x in fresh})
        state("maint")
        moved = [self._get(lbd, f"lbd_srv={value}") for _ in range(10)]
        self.assertEqual({x.status for x in moved}, {200})
        self.assertNotIn(mine.name, {x.backend for x in moved})
        self.assertTrue(all(set_cookie(x) for x in moved), "re-pinned: a new cookie each")
        state("ready")
        back = [self._get(lbd, f"lbd_srv={value}") for _ in range(5)]
        self.assertEqual({(x.status, x.backend) for x in back}, {(200, mine.name)})
        self.assertEqual(self._sticky(lbd)["repins"], 10)

    def test_forged_and_malformed(self):
        """Cookies that name no server are ignored: the request is balanced
        as if it had none and gets a fresh cookie. A value made with the
        documented formula and the right secret does pick its server (the
        MAC is what names it); one made with another secret does not."""
        b = self.start_backends("b1", "b2", "b3")
        lbd = self._lbd(b)
        b2 = b[1]
        bad = ["garbage", "", "A" * 16,
               cookie_value("web", b2.addr, secret="another-secret-of-16+"),
               cookie_value("other", b2.addr), cookie_value("web", b2.addr)[:15], "=;=;;"]
        bad = [f"lbd_srv={v}" for v in bad] + ["=;=;; lbd_srv; ;"]
        seen = set()
        for v in bad:
            r = self._get(lbd, v)
            seen.add(r.backend)
            self.assertEqual(r.status, 200, v)
            line = set_cookie(r)
            self.assertIsNotNone(line, v)
            answered = [x for x in b if x.name == r.backend][0]
            self.assertEqual(pinned(r), cookie_value("web", answered.addr))
        self.assertEqual(seen, {"b1", "b2", "b3"}, "balanced by the strategy (round robin)")
        self.assertEqual(self._sticky(lbd), {"hits": 0, "repins": 0, "invalid": len(bad) - 1},
                         "the last one has no lbd_srv cookie at all")
        good = [self._get(lbd, f'lbd_srv="{cookie_value("web", b2.addr)}"') for _ in range(5)]
        good += [self._get(lbd, f"lbd_srv=forged; lbd_srv={cookie_value('web', b2.addr)}")
                 for _ in range(5)]
        self.assertEqual({(x.backend, set_cookie(x)) for x in good}, {("b2", None)})

    def test_two_instances_same_secret(self):
        """Two lbd instances with the same pool and secret (servers listed in
        another order, another strategy): a cookie from one picks the same
        server on the other, which sets no new cookie."""
        b = self.start_backends("b1", "b2", "b3")
        a = self._lbd(b, name="a.conf")
        other = self._lbd(list(reversed(b)), strategy="least_connections", name="b.conf")
        for _ in range(3):
            r = self._get(a)
            got = [self._get(other, f"lbd_srv={pinned(r)}") for _ in range(10)]
            self.assertEqual({(x.backend, set_cookie(x)) for x in got}, {(r.backend, None)})

    def test_strip(self):
        """lbd's cookie is removed from the request the server gets, the
        others stay as they were; a Cookie header that held only it is left
        out. With strip = false it is passed on."""
        b1, = self.start_backends("b1")
        lbd = self._lbd([b1])
        v = pinned(self._get(lbd))
        cases = [(f"a=1; lbd_srv={v}; b=2", "Cookie: a=1; b=2\r\n"),
                 (f"lbd_srv={v};a=1", "Cookie: a=1\r\n"),
                 (f"a=1;lbd_srv=forged;b=2", "Cookie: a=1;b=2\r\n"),
                 (f"x=lbd_srv; lbd_srvx=1; lbd_srv={v}", "Cookie: x=lbd_srv; lbd_srvx=1\r\n")]
        for sent, want in cases:
            r = self._get(lbd, sent, target="/?echo=1")
            head = r.body.decode()
            self.assertIn(want, head, sent)
            self.assertNotIn(f"lbd_srv={v}", head)
            self.assertNotIn("lbd_srv=forged", head)
        r = self._get(lbd, f"lbd_srv={v}", target="/?echo=1")
        self.assertNotIn("cookie:", r.body.decode().lower())
        # Two Cookie headers, both holding it: both stripped.
        with HttpConn(lbd.listen) as c:
            r = c.request("/?echo=1", headers=[("Cookie", f"lbd_srv={v}; a=1"),
                                               ("Cookie", f"b=2; lbd_srv={v}")])
        head = r.body.decode()
        self.assertIn("Cookie: a=1\r\n", head)
        self.assertIn("Cookie: b=2\r\n", head)
        self.assertEqual((r.backend, set_cookie(r)), ("b1", None))

        kept = self._lbd([b1], {"strip": False}, name="nostrip.conf")
        r = self._get(kept, f"a=1; lbd_srv={v}", target="/?echo=1")
        self.assertIn(f"Cookie: a=1; lbd_srv={v}\r\n", r.body.decode())

    def test_strip_on_retry(self):
        """A retried request is written again: its copy is stripped too."""
        b1, b2 = self.start_backends("b1", "b2")
        lbd = self._lbd([b1, b2], more={"retries": {"attempts": 2}})
        r = self._get(lbd)
        v, victim = pinned(r), [x for x in (b1, b2) if x.name == r.backend][0]
        kill_backend(victim)
        r2 = self._get(lbd, f"a=1; lbd_srv={v}", target="/?echo=1")
        self.assertEqual(r2.status, 200)
        self.assertIn("Cookie: a=1\r\n", r2.body.decode())
        self.assertNotIn("lbd_srv", r2.body.decode())

    def test_backend_cookies_untouched(self):
        """The server's own Set-Cookie passes as it is, beside lbd's on a
        first answer and alone once the client is pinned."""
        b1, = self.start_backends("b1")
        lbd = self._lbd([b1])
        r = self._get(lbd, target="/?setcookie=1")
        self.assertEqual(sorted(r.header_all("Set-Cookie"))[0], "app=1; Path=/")
        v = pinned(r)
        r2 = self._get(lbd, f"app=1; lbd_srv={v}", target="/?setcookie=1&echo=1")
        self.assertEqual(r2.header_all("Set-Cookie"), ["app=1; Path=/"])
        self.assertIn("Cookie: app=1\r\n", r2.body.decode())

    def test_off_sets_nothing(self):
        """A pool without sticky sets no cookie and passes a cookie of that
        name on untouched."""
        b1, = self.start_backends("b1")
        lbd = self.simple_lbd([b1])
        r = self.get("/?echo=1", headers=[("Cookie", "lbd_srv=abc")])
        self.assertEqual(r.header_all("Set-Cookie"), [])
        self.assertIn("Cookie: lbd_srv=abc\r\n", r.body.decode())

    def test_no_secret_warns(self):
        """Without a secret lbd says at start what that means; cookies
        still work and are the same on every such lbd."""
        b1, = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        cfg = lbd_config(listen, [{"name": "web", "sticky": {}, "servers": [(b1.addr, 1)]}])
        lbd = self.start_lbd(cfg, listen)
        lbd.wait_log(r"pool 'web': sticky without a secret")
        v = pinned(self.get("/"))
        self.assertTrue(re.fullmatch(r"[A-Za-z0-9_-]{16}", v), v)
        r = self.get("/", headers=[("Cookie", f"lbd_srv={v}")])
        self.assertEqual((r.backend, set_cookie(r)), ("b1", None))
