"""Runtime servers through the admin API (issue 18): POST and DELETE of
/api/pools/{pool}/servers into a pool's max_servers slots, the same servers
under their own address in GET /api/pools, PUT, /status and lbd -s, and
sticky cookies that name them by pool and address like static servers."""
import time

from lbdtest import free_port, wait_for
from lbdextra import admin_status, run_requests, tally
from test_api import TOKEN, ApiTestCase, api
from test_sticky import SECRET, cookie_value, pinned


class RuntimeApiTest(ApiTestCase):

    def _lbd(self, static, max_servers, sticky=None, workers=2, strategy="round_robin"):
        """lbd with pool 'web' (STATIC backends, room for MAX_SERVERS) and
        pool 'fixed' (no room), admin API with TOKEN."""
        self.listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        web = {"name": "web", "strategy": strategy, "max_servers": max_servers,
               "servers": [(b.addr, 1) for b in static]}
        if sticky is not None:
            web["sticky"] = sticky
        self.pools = [web, {"name": "fixed", "servers": [(static[0].addr, 1)]}]
        self.admin_extra = f'admin = {{ address = "{self.admin}"; token = "{TOKEN}"; }};\n'
        return self.start_lbd(self.config_text(self.pools), self.listen, workers=workers)

    def _pool(self, name="web"):
        st, doc, r = api(self.admin, "/api/pools")
        self.assertEqual(st, 200, r.body)
        return [p for p in doc["pools"] if p["name"] == name][0]

    def _post(self, address, weight=None, token=TOKEN, pool="web"):
        body = {"address": address}
        if weight is not None:
            body["weight"] = weight
        return api(self.admin, f"/api/pools/{pool}/servers", "POST", body, token)

    def _counts(self, n, headers=()):
        per, bad = tally(run_requests(self.listen, [("/", tuple(headers))] * n, nthreads=3))
        self.assertEqual(bad, [])
        return per

    def test_post_delete_and_errors(self):
        """POST adds a server into a free slot (201, its real address in GET
        /api/pools, traffic at once); 409 for a duplicate (runtime or
        static) and for a pool without max_servers, 507 when every slot is
        taken, 404 for an unknown pool, 400 for a bad address, weight or key,
        401 without the token. DELETE of a runtime server removes it (no new
        request reaches it), DELETE of a static one resets its overrides
        and keeps it. A removed server's slot is free again after its
        grace."""
        a, b, c, d = self.start_backends("a", "b", "c", "d")
        lbd = self._lbd([a], max_servers=3)
        pool = self._pool()
        self.assertEqual(pool["max_servers"], 3)
        self.assertEqual([s["address"] for s in pool["servers"]], [a.addr])

        st, doc, r = self._post(b.addr, token=None)
        self.assertEqual(st, 401, r.body)
        st, doc, r = self._post(b.addr, weight=2)
        self.assertEqual(st, 201, r.body)
        self.assertEqual(doc["address"], b.addr)
        self.assertEqual(doc["origin"], "runtime")
        self.assertEqual(doc["runtime"]["weight"], 2)
        st, doc, r = self._post(c.addr.replace("127.0.0.1", "localhost"))
        self.assertEqual(st, 201, r.body)
        self.assertEqual(doc["address"], c.addr, "stored in canonical form")

        for addr, status, part in ((b.addr, 409, "already"), (a.addr, 409, "already"),
                                   (d.addr, 507, "full"), ("example.com:80", 400, "address"),
                                   ("127.0.0.1", 400, "address"),
                                   ("127.0.0.1:0", 400, "address")):
            st, doc, r = self._post(addr)
            self.assertEqual(st, status, (addr, r.body))
            self.assertIn(part, doc["message"], addr)
        st, doc, r = self._post(d.addr, pool="nope")
        self.assertEqual(st, 404, r.body)
        st, doc, r = self._post(d.addr, pool="fixed")
        self.assertEqual(st, 409, r.body)
        self.assertIn("max_servers", doc["message"])
        for body in ({"address": d.addr, "weight": 0}, {"address": d.addr, "weight": "1"},
                     {"address": d.addr, "x": 1}, {"weight": 1}):
            st, doc, r = api(self.admin, "/api/pools/web/servers", "POST", body, TOKEN)
            self.assertEqual(st, 400, (body, r.body))
        st, doc, r = api(self.admin, "/api/pools/web/servers", "GET")
        self.assertEqual(st, 405, r.body)

        pool = self._pool()
        self.assertEqual([s["address"] for s in pool["servers"]], [a.addr, b.addr, c.addr])
        self.assertFalse(any("runtime#" in s["address"] for s in pool["servers"]))
        per = self._counts(80)
        self.assertEqual(sum(per.values()), 80)
        self.assertEqual(set(per), {"a", "b", "c"}, per)

        # /status and lbd -s: real addresses, no empty slot.
        for doc in (admin_status(self.admin), lbd.snapshot()):
            web = [p for p in doc["pools"] if p["name"] == "web"][0]
            self.assertEqual(sorted(s["address"] for s in web["servers"]),
                             sorted([a.addr, b.addr, c.addr]))

        # DELETE of a runtime server: removed, drains, gets nothing new.
        st, doc, r = api(self.admin, self.server_path(b), "DELETE", None, TOKEN)
        self.assertEqual(st, 200, r.body)
        self.assertTrue(doc["removed"])
        before = b.stats()["requests"]
        per = self._counts(60)
        self.assertNotIn("b", per)
        self.assertEqual(b.stats()["requests"], before + 1, "only the stats call itself")
        st, doc, r = api(self.admin, self.server_path(b), "DELETE", None, TOKEN)
        self.assertEqual(st, 404, r.body)
        st, doc, r = api(self.admin, self.server_path(b), "PUT", {"weight": 3}, TOKEN)
        self.assertEqual(st, 404, r.body)

        # DELETE of a static server: its overrides go, it stays.
        self.put(a, {"weight": 5, "state": "drain"})
        st, doc, r = api(self.admin, self.server_path(a), "DELETE", None, TOKEN)
        self.assertEqual(st, 200, r.body)
        self.assertFalse(doc["overridden"])
        self.assertFalse(doc["removed"])
        self.assertEqual(doc["runtime"], {"weight": 1, "state": "ready"})
        self.assertIn(a.addr, [s["address"] for s in self._pool()["servers"]])

        # The slot b left is free once drained (LB_RUNTIME_GRACE_MS, 5 s).
        wait_for(lambda: self._post(d.addr)[0] == 201, 20, interval=0.5,
                 what="a drained slot to take a new server")
        self.assertEqual(sorted(s["address"] for s in self._pool()["servers"]),
                         sorted([a.addr, c.addr, d.addr]))
        self.assertGreater(self._counts(60).get("d", 0), 0)
        self.assertIn(f"server {d.addr} added", lbd.log())
        self.assertIn(f"runtime server {b.addr} removed", lbd.log())

    def test_drain_and_weight_of_an_added_server(self):
        """PUT works on a runtime server under its address: drained, it gets
        no new request; a weight override holds and shows; ready again, it
        gets its share back."""
        a, b = self.start_backends("a", "b")
        lbd = self._lbd([a], max_servers=2, strategy="weighted_round_robin")
        st, doc, r = self._post(b.addr)
        self.assertEqual(st, 201, r.body)
        self.assertGreater(self._counts(40).get("b", 0), 0)

        doc = self.put(b, {"state": "drain"})
        self.assertEqual(doc["runtime"]["state"], "drain")
        before = b.stats()["requests"]
        per = self._counts(60)
        self.assertEqual(per, {"a": 60})
        self.assertEqual(b.stats()["requests"], before + 1, "only the stats call itself")

        doc = self.put(b, {"state": "ready", "weight": 3})
        self.assertEqual(doc["weight_override"], 3)
        self.assertEqual(doc["file"]["weight"], 1, "the weight it was added with")
        srv = [s for s in self._pool()["servers"] if s["address"] == b.addr][0]
        self.assertEqual(srv["runtime"], {"weight": 3, "state": "ready"})
        per = self._counts(80)
        self.assertEqual(sum(per.values()), 80)
        self.assertGreaterEqual(per.get("b", 0), 55, per)      # 3:1 is 60:20

        # A reload keeps the added server and its override.
        lbd.reload()
        srv = [s for s in self._pool()["servers"] if s["address"] == b.addr][0]
        self.assertEqual(srv["runtime"], {"weight": 3, "state": "ready"})
        self.assertGreater(self._counts(40).get("b", 0), 20)

    def test_sticky_cookie_of_an_added_server(self):
        """A sticky pool's runtime server gets the cookie value of its pool
        and address (the documented HMAC, as a static server's): a client
        holding it stays on it; once the server is removed the same cookie
        is re-pinned to a server still there."""
        a, b = self.start_backends("a", "b")
        lbd = self._lbd([a], max_servers=2, sticky={"secret": SECRET})
        st, doc, r = self._post(b.addr)
        self.assertEqual(st, 201, r.body)
        mine = cookie_value("web", b.addr)
        # A fresh client pinned to b gets b's value in its Set-Cookie.
        got = set()
        for _ in range(6):
            r = self.get("/", lbd=lbd)
            if r.backend == "b":
                got.add(pinned(r))
        self.assertEqual(got, {mine})
        per = self._counts(40, headers=[("Cookie", f"lbd_srv={mine}")])
        self.assertEqual(per, {"b": 40})

        st, doc, r = api(self.admin, self.server_path(b), "DELETE", None, TOKEN)
        self.assertEqual(st, 200, r.body)
        r = self.get("/", lbd=lbd, headers=[("Cookie", f"lbd_srv={mine}")])
        self.assertEqual(r.backend, "a")
        self.assertEqual(pinned(r), cookie_value("web", a.addr))
        per = self._counts(20, headers=[("Cookie", f"lbd_srv={mine}")])
        self.assertEqual(per, {"a": 20})
