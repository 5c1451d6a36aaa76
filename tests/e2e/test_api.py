"""The admin API (master/admin.c): bearer-token auth, JSON errors, runtime
server weights and states (drain, maint) kept in shared memory, applied by
every worker at once and kept over worker deaths and reloads."""
import json
import os
import signal
import time

from lbdtest import HttpConn, LbdTestCase, free_port, http_get, lbd_config, wait_for
from lbdextra import admin_status, find_server, run_requests, tally

TOKEN = "s3cret-Token_1"


def api(addr, path, method="GET", body=None, token=None, raw=None):
    """(status, JSON body or None, response) of one admin API call."""
    headers = []
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    if raw is None and body is not None:
        raw = json.dumps(body).encode()
    if raw is not None:
        headers.append(("Content-Type", "application/json"))
    r = http_get(addr, path, host="admin.test", method=method, headers=headers, body=raw)
    try:
        doc = json.loads(r.body) if r.body else None
    except ValueError:
        doc = None
    return r.status, doc, r


class ApiTestCase(LbdTestCase):

    def api_lbd(self, servers, strategy="weighted_round_robin", token=TOKEN, workers=2,
                token_line=None, more_pools=(), extra=""):
        """lbd with pool 'web' over SERVERS [(backend, weight)] and an
        admin listener (with TOKEN unless None)."""
        self.listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        if token_line is None:
            token_line = f'token = "{token}";' if token is not None else ""
        self.pools = [{"name": "web", "strategy": strategy,
                       "servers": [(b.addr, w) for b, w in servers]}] + list(more_pools)
        self.admin_extra = f'admin = {{ address = "{self.admin}"; {token_line} }};\n' + extra
        cfg = lbd_config(self.listen, self.pools, workers=workers, extra=self.admin_extra)
        return self.start_lbd(cfg, self.listen, workers=workers)

    def config_text(self, pools):
        return lbd_config(self.listen, pools, workers=2, extra=self.admin_extra)

    def server_path(self, b, pool="web"):
        return f"/api/pools/{pool}/servers/{b.addr}"

    def put(self, b, body, token=TOKEN):
        st, doc, r = api(self.admin, self.server_path(b), "PUT", body, token)
        self.assertEqual(st, 200, r.body)
        return doc

    def counts(self, n, nthreads=4):
        per, bad = tally(run_requests(self.listen, [("/", ())] * n, nthreads=nthreads))
        self.assertEqual(bad, [])
        return per


class ApiAuthTest(ApiTestCase):

    def assertError(self, status, got, message_part=None):
        st, doc, r = got
        self.assertEqual(st, status, r.body)
        self.assertEqual((r.header("Content-Type") or "").split(";")[0], "application/json")
        self.assertEqual(doc["status"], status)
        self.assertTrue(doc["message"], doc)
        if message_part:
            self.assertIn(message_part, doc["message"])
        return r

    def test_auth_errors_and_change_log(self):
        """Reads are open; a change needs the bearer token: 401 without it or
        with a wrong one (WWW-Authenticate: Bearer), 200 with it. Errors are
        JSON: 404 unknown pool, server or path, 405 (Allow), 400 bad JSON or
        values, 413 over 64 KiB. Each change is logged with the peer."""
        a, b = self.start_backends("a", "b")
        lbd = self.api_lbd([(a, 1), (b, 1)])
        st, doc, _ = api(self.admin, "/api/pools")
        self.assertEqual(st, 200)
        self.assertEqual([p["name"] for p in doc["pools"]], ["web"])
        srv = doc["pools"][0]["servers"][0]
        self.assertEqual(srv["address"], a.addr)
        self.assertEqual(srv["file"], {"weight": 1, "state": "ready"})
        self.assertEqual(srv["runtime"], {"weight": 1, "state": "ready"})
        self.assertIsNone(srv["weight_override"])
        self.assertFalse(srv["overridden"])
        path = self.server_path(a)

        r = self.assertError(401, api(self.admin, path, "PUT", {"weight": 2}))
        self.assertTrue((r.header("WWW-Authenticate") or "").startswith("Bearer"))
        self.assertError(401, api(self.admin, path, "PUT", {"weight": 2}, token="nope"))
        self.assertError(401, api(self.admin, path, "PUT", {"weight": 2}, token=TOKEN + "x"))
        self.assertError(401, api(self.admin, path, "PUT", {"weight": 2}, token=TOKEN[:-1]))
        self.assertError(401, api(self.admin, path, "DELETE", None))
        r = http_get(self.admin, path, host="admin.test", method="PUT",
                     headers=[("Authorization", f"Basic {TOKEN}")], body=b'{"weight":2}')
        self.assertEqual(r.status, 401)
        # Nothing changed by the refused calls.
        self.assertIsNone(find_server(admin_status(self.admin), a.addr)["weight_override"])

        self.assertError(404, api(self.admin, "/api/pools/nope/servers/" + a.addr, "PUT",
                                  {"weight": 2}, TOKEN), "nope")
        self.assertError(404, api(self.admin, "/api/pools/web/servers/127.0.0.1:1", "PUT",
                                  {"weight": 2}, TOKEN))
        self.assertError(404, api(self.admin, "/api/nothing"))
        self.assertError(404, api(self.admin, "/api/pools/web/x"))
        r = self.assertError(405, api(self.admin, path, "POST", {"weight": 2}, TOKEN))
        self.assertIn("PUT", r.header("Allow"))
        self.assertError(405, api(self.admin, "/api/pools", "PUT", {"weight": 2}, TOKEN))
        self.assertError(405, api(self.admin, "/status", "DELETE", None, TOKEN))
        for raw in (b"", b"{", b"[1]", b'{"weight": 2', b'{"weight": {"x": 1}}', b"weight=2",
                    b"{}"):
            self.assertError(400, api(self.admin, path, "PUT", raw=raw, token=TOKEN))
        for body in ({"weight": -1}, {"weight": 1001}, {"weight": "3"}, {"weight": 2.5},
                     {"state": "down"}, {"state": 1}, {"color": "red"},
                     {"weight": 2, "state": "nap"}):
            self.assertError(400, api(self.admin, path, "PUT", body, TOKEN))
        self.assertError(413, api(self.admin, path, "PUT", token=TOKEN,
                                  raw=b'{"x":"' + b"y" * (65 * 1024) + b'"}'))
        self.assertIsNone(find_server(admin_status(self.admin), a.addr)["weight_override"])

        off = lbd.log_size()
        st, doc, _ = api(self.admin, path, "PUT", {"weight": 2, "state": "drain"}, TOKEN)
        self.assertEqual(st, 200)
        self.assertEqual(doc["runtime"], {"weight": 2, "state": "drain"})
        self.assertEqual(doc["file"], {"weight": 1, "state": "ready"})
        self.assertEqual(doc["weight_override"], 2)
        self.assertTrue(doc["overridden"])
        lbd.wait_log(r"admin: PUT from 127\.0\.0\.1:\d+: pool 'web' server " + a.addr.replace(".", r"\.")
                     + r": weight 2 \(file 1\) state drain", since=off)
        # The same in lbd -s and /status.
        for snap in (lbd.snapshot(), admin_status(self.admin)):
            s = find_server(snap, a.addr)
            self.assertEqual((s["weight"], s["file_weight"], s["weight_override"],
                              s["admin_state"], s["drain"]), (2, 1, 2, "drain", True))
        st, doc, _ = api(self.admin, path, "DELETE", None, TOKEN)
        self.assertEqual(st, 200)
        self.assertEqual(doc["runtime"], {"weight": 1, "state": "ready"})
        self.assertIsNone(doc["weight_override"])
        lbd.wait_log(r"admin: DELETE from 127\.0\.0\.1:\d+: pool 'web'", since=off)
        st, doc, _ = api(self.admin, path)
        self.assertEqual((st, doc["runtime"]["state"]), (200, "ready"))

    def test_no_token_means_no_changes(self):
        """Without admin.token a change is 403 with a message that says how
        to enable changes; reads still work."""
        a, = self.start_backends("a")
        self.api_lbd([(a, 1)], token=None)
        self.assertEqual(api(self.admin, "/api/pools")[0], 200)
        self.assertError(403, api(self.admin, self.server_path(a), "PUT", {"weight": 2}, TOKEN),
                         "token")
        self.assertError(403, api(self.admin, self.server_path(a), "PUT", {"weight": 2}))

    def test_token_file(self):
        """token_file is read (trailing newline dropped), relative to the
        configuration's directory."""
        a, = self.start_backends("a")
        with open(os.path.join(self.tmp, "admin.token"), "w") as f:
            f.write("from-a-file\n")
        self.api_lbd([(a, 1)], token_line='token_file = "admin.token";')
        self.assertError(401, api(self.admin, self.server_path(a), "PUT", {"weight": 2}, TOKEN))
        st, doc, _ = api(self.admin, self.server_path(a), "PUT", {"weight": 2}, "from-a-file")
        self.assertEqual((st, doc["runtime"]["weight"]), (200, 2))


class ApiRuntimeTest(ApiTestCase):

    def test_runtime_weight_proportions(self):
        """Weights 1:1, then a at 3 at run time: of 1,000 requests through
        both workers a gets about 3/4 (smooth WRR over the shared cursor:
        exact but for the cycle in progress; bounds 650-850). Back to 1:1
        with DELETE; weight 0 takes a out."""
        a, b = self.start_backends("a", "b")
        self.api_lbd([(a, 1), (b, 1)])
        per = self.counts(200)
        self.assertEqual(per, {"a": 100, "b": 100})
        self.put(a, {"weight": 3})
        per = self.counts(1000)
        self.assertTrue(650 <= per.get("a", 0) <= 850, per)
        self.assertEqual(sum(per.values()), 1000)
        self.put(a, {"weight": 0})
        self.assertEqual(self.counts(100), {"b": 100})
        api(self.admin, self.server_path(a), "DELETE", None, TOKEN)
        per = self.counts(200)
        self.assertTrue(80 <= per.get("a", 0) <= 120, per)

    def test_runtime_weight_random_strategy(self):
        """random reads the weights at each pick: 1:3 within binomial bounds
        (p = 3/4 of 1,000: mean 750, sd 14; bounds 650-850)."""
        a, b = self.start_backends("a", "b")
        self.api_lbd([(a, 1), (b, 1)], strategy="random")
        self.put(b, {"weight": 3})
        per = self.counts(1000)
        self.assertTrue(650 <= per.get("b", 0) <= 850, per)

    def test_drain_and_maint(self):
        """drain and maint take a server out of rotation at once in every
        worker (none of 200 requests reach it, by the backend's own count);
        ready brings it back. Both show in /status, lbd -s and metrics."""
        a, b = self.start_backends("a", "b")
        lbd = self.api_lbd([(a, 1), (b, 1)], strategy="round_robin")
        for state in ("drain", "maint"):
            self.put(a, {"state": state})
            before = a.stats()["requests"]
            self.assertEqual(self.counts(200), {"b": 200}, state)
            self.assertEqual(a.stats()["requests"], before + 1, f"{state}: only /stats reached a")
            s = find_server(lbd.snapshot(), a.addr)
            self.assertEqual((s["admin_state"], s["drain"]), (state, True))
            m = http_get(self.admin, "/metrics", host="admin.test").body.decode()
            self.assertIn(f'lbd_backend_admin_state{{pool="web",server="{a.addr}",state="{state}"}} 1',
                          m)
            self.assertIn(f'lbd_backend_up{{pool="web",server="{a.addr}"}} 0', m)
        self.put(a, {"state": "ready"})
        self.assertEqual(self.counts(200), {"a": 100, "b": 100})

    def test_drained_server_never_costs_a_503(self):
        """Round robin's cursor is shared by the workers: with one of two
        servers drained, a worker whose tickets all land on the drained
        one (the other worker took the good tickets in between) must still
        find the usable server, not answer 503. 4,000 requests over 8
        connections and 2 workers: every one 200, all from b."""
        a, b = self.start_backends("a", "b")
        self.api_lbd([(a, 1), (b, 1)], strategy="round_robin")
        self.put(a, {"state": "drain"})
        per, bad = tally(run_requests(self.listen, [("/", ())] * 4000, nthreads=8))
        self.assertEqual(bad, [])
        self.assertEqual(per, {"b": 4000})

    def test_maint_stops_health_checks(self):
        """maint means no traffic at all: the health checks stop too (the
        backend's own request count does not move over 10 check intervals)
        and resume with ready; drain keeps checking."""
        a, = self.start_backends("a")
        self.listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        pools = [{"name": "web", "servers": [(a.addr, 1)],
                  "health_check": {"path": "/healthz", "interval": "100ms", "timeout": "100ms",
                                   "rise": 1, "fall": 1}}]
        self.start_lbd(lbd_config(self.listen, pools, workers=1,
                                  extra=f'admin = {{ address = "{self.admin}"; token = "{TOKEN}"; }};'),
                       self.listen, workers=1)
        wait_for(lambda: find_server(admin_status(self.admin), a.addr)["checks"]["ok"] >= 2, 10,
                 what="two passed checks")
        self.put(a, {"state": "maint"})
        time.sleep(0.3)     # a check under way when maint began may still land
        before = a.stats()["requests"]
        time.sleep(1.0)
        self.assertEqual(a.stats()["requests"], before + 1, "only /stats reached a")
        self.put(a, {"state": "drain"})
        wait_for(lambda: a.stats()["requests"] > before + 4, 10, what="checks again in drain")

    def test_all_maint_is_503(self):
        """Every server in maint: 503, no backend reached."""
        a, = self.start_backends("a")
        self.api_lbd([(a, 1)])
        self.put(a, {"state": "maint"})
        before = a.stats()["requests"]
        self.assertEqual(http_get(self.listen, "/").status, 503)
        self.assertEqual(a.stats()["requests"], before + 1)

    def test_overrides_survive_worker_kill_and_reload(self):
        """A drained server and a runtime weight stay after kill -9 of a
        worker (respawned) and after a reload that adds a server (the rows
        are found again by pool and address); a server removed by a reload
        and added back starts from the file's values."""
        self.expect_worker_deaths()
        a, b, c = self.start_backends("a", "b", "c")
        lbd = self.api_lbd([(a, 1), (b, 1)], workers=2)
        self.put(a, {"state": "drain"})
        self.put(b, {"weight": 5})
        pids = lbd.worker_pids()
        os.kill(pids[0], signal.SIGKILL)
        wait_for(lambda: lbd.worker_pids().get(0) not in (None, pids[0]), 15,
                 what="worker 0 respawned")
        lbd.wait_ready(workers=2)
        self.assertEqual(self.counts(100), {"b": 100})
        # Reload with c added: a still drained, b still 5, c at its file weight.
        pools = [{"name": "web", "strategy": "weighted_round_robin",
                  "servers": [(a.addr, 1), (b.addr, 1), (c.addr, 1)]}]
        lbd.reload(self.config_text(pools))
        st, doc, _ = api(self.admin, "/api/pools")
        srv = {s["address"]: s for s in doc["pools"][0]["servers"]}
        self.assertEqual(srv[a.addr]["runtime"], {"weight": 1, "state": "drain"})
        self.assertEqual(srv[b.addr]["runtime"], {"weight": 5, "state": "ready"})
        self.assertEqual(srv[c.addr]["runtime"], {"weight": 1, "state": "ready"})
        per = self.counts(600)
        self.assertNotIn("a", per)
        self.assertEqual(per.get("b", 0) + per.get("c", 0), 600)
        self.assertTrue(440 <= per.get("b", 0) <= 560, per)       # 5:1 -> 500
        # a removed, then back: its overrides went with it.
        lbd.reload(self.config_text([{"name": "web", "strategy": "weighted_round_robin",
                                      "servers": [(b.addr, 1), (c.addr, 1)]}]))
        lbd.reload(self.config_text(pools))
        st, doc, _ = api(self.admin, self.server_path(a))
        self.assertEqual(doc["runtime"], {"weight": 1, "state": "ready"})
        st, doc, _ = api(self.admin, self.server_path(b))
        self.assertEqual(doc["runtime"], {"weight": 5, "state": "ready"})
