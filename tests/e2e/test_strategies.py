"""Balancing strategies: least_connections, power_of_two, random, hash
(ketama), least_time, next to round robin; every strategy skips DOWN and
zero-weight servers."""
import threading

from lbdtest import HttpConn, LbdTestCase, free_port, wait_for
from lbdextra import (PyServer, admin_status, ext_config, find_server, kill_backend,
                      run_requests, tally, wait_health)

STRATEGIES = ["round_robin", "weighted_round_robin", "least_connections", "power_of_two",
              "random", "hash", "least_time"]

TCP_CHECK = {"interval": "300ms", "timeout": "200ms", "rise": 2, "fall": 2}


class StrategyTest(LbdTestCase):

    def _lbd(self, pools, routes=None, workers=2, admin=True):
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}" if admin else None
        cfg = ext_config(listen, pools, routes=routes, workers=workers, admin=self.admin)
        return self.start_lbd(cfg, listen, workers=workers)

    # -- every strategy: only UP servers with a weight ------------------------

    def test_every_strategy_skips_down_and_zero_weight(self):
        """4 servers in one pool per strategy: c has weight 0, d is killed
        and found DOWN by a TCP check. Every strategy then sends requests to
        a and b only (both of them), and every request succeeds."""
        a, b, c, d = self.start_backends("a", "b", "c", "d")
        servers = [(a.addr, 1), (b.addr, 1), (c.addr, 0), (d.addr, 1)]
        pools = [{"name": s, "strategy": s, "servers": servers, "health_check": TCP_CHECK,
                  **({"hash_key": "header:X-User"} if s == "hash" else {})}
                 for s in STRATEGIES]
        routes = [("*", f"/{s}", s) for s in STRATEGIES]
        self._lbd(pools, routes=routes)
        kill_backend(d)
        for s in STRATEGIES:
            srv = wait_health(self.admin, d.addr, "down", pool=s, reason="health_check")
            self.assertTrue(srv["checks"]["last_error"], srv)
        status = admin_status(self.admin)
        for s in STRATEGIES:
            self.assertEqual(find_server(status, c.addr, s)["weight"], 0)
            for be in (a, b, c):
                self.assertEqual(find_server(status, be.addr, s)["health"], "up", (s, be.name))

        for s in STRATEGIES:
            jobs = [(f"/{s}/x", [("X-User", f"user-{i}")]) for i in range(80)]
            per, bad = tally(run_requests(self.lbd.listen, jobs, nthreads=4))
            self.assertEqual(bad, [], f"{s}: failed requests")
            self.assertEqual(set(per), {"a", "b"}, f"{s}: {per}")
        status = admin_status(self.admin)
        for s in STRATEGIES:
            self.assertEqual(find_server(status, c.addr, s)["requests"], 0, s)
            self.assertEqual(find_server(status, d.addr, s)["requests"], 0, s)

    # -- random, power_of_two, weighted random ------------------------------

    def test_random_and_power_of_two_spread_load(self):
        """3,000 requests each: random and power_of_two give each of 3
        servers a fair share (wide bounds); random with weights 5,3,1 gives
        shares close to 5/9, 3/9, 1/9."""
        a, b, c = self.start_backends("a", "b", "c")
        eq = [(a.addr, 1), (b.addr, 1), (c.addr, 1)]
        pools = [{"name": "rnd", "strategy": "random", "servers": eq},
                 {"name": "p2c", "strategy": "power_of_two", "servers": eq},
                 {"name": "wrnd", "strategy": "random",
                  "servers": [(a.addr, 5), (b.addr, 3), (c.addr, 1)]}]
        routes = [("*", "/rnd", "rnd"), ("*", "/p2c", "p2c"), ("*", "/wrnd", "wrnd")]
        self._lbd(pools, routes=routes, admin=False)
        n = 3000
        for path in ("/rnd", "/p2c"):
            per, bad = tally(run_requests(self.lbd.listen, [(path, ())] * n, nthreads=6))
            self.assertEqual(bad, [], path)
            self.assertEqual(sum(per.values()), n)
            for name in ("a", "b", "c"):
                # expected 1000; 600..1400 is more than 15 standard deviations
                self.assertGreater(per.get(name, 0), 600, f"{path}: {per}")
                self.assertLess(per.get(name, 0), 1400, f"{path}: {per}")
        per, bad = tally(run_requests(self.lbd.listen, [("/wrnd", ())] * n, nthreads=6))
        self.assertEqual(bad, [])
        for name, w in (("a", 5), ("b", 3), ("c", 1)):
            want = n * w / 9
            self.assertLess(abs(per.get(name, 0) - want), 0.3 * want,
                            f"weights 5,3,1: {per} (want {name} ~{want:.0f})")

    # -- hash -----------------------------------------------------------------

    def _map_users(self, users, path="/h", rounds=1):
        """{user: backend}; each user asked ROUNDS times (must agree)."""
        jobs = [(path, [("X-User", u)]) for _ in range(rounds) for u in users]
        res = run_requests(self.lbd.listen, jobs, nthreads=6)
        out = {}
        for (_, hdrs), r in zip(jobs, res):
            self.assertEqual(r[0], 200, r)
            u = hdrs[0][1]
            if u in out:
                self.assertEqual(out[u], r[1], f"user {u} moved between requests")
            out[u] = r[1]
        return out

    def test_hash_header_stable_and_consistent_on_removal(self):
        """hash on header:X-User: 200 users land on one server each, always
        the same (3 rounds); the 4 servers all get some. Reload without
        server c: only c's users move; none among a, b, d; about 1/4 move."""
        bs = self.start_backends("a", "b", "c", "d")
        listen = f"127.0.0.1:{free_port()}"

        def cfg(backends):
            return ext_config(listen, [{"name": "h", "strategy": "hash", "hash_key": "header:X-User",
                                        "servers": [(x.addr, 1) for x in backends]}], workers=2)
        lbd = self.start_lbd(cfg(bs), listen, workers=2)
        users = [f"user-{i:03d}-{i * 7919 % 1000}" for i in range(200)]
        before = self._map_users(users, rounds=3)
        counts = {}
        for v in before.values():
            counts[v] = counts.get(v, 0) + 1
        self.assertEqual(set(counts), {"a", "b", "c", "d"}, counts)
        for name, k in counts.items():
            self.assertGreater(k, 15, f"ketama spread over 4 servers: {counts}")

        lbd.reload(cfg([bs[0], bs[1], bs[3]]))
        wait_for(lambda: len(lbd.running_workers()) == 2 and
                 all(w["generation"] == 2 for w in lbd.running_workers()), 15,
                 what="only generation-2 workers")
        after = self._map_users(users, rounds=2)
        moved = [u for u in users if before[u] != after[u]]
        kept_moved = [u for u in moved if before[u] != "c"]
        self.assertEqual(kept_moved, [], "users of servers that stayed must not move: " +
                         ", ".join(f"{u}:{before[u]}->{after[u]}" for u in kept_moved[:10]))
        self.assertEqual(sorted(moved), sorted(u for u in users if before[u] == "c"))
        self.assertNotIn("c", after.values())
        frac = len(moved) / len(users)
        self.assertGreater(frac, 0.10, f"{len(moved)} of {len(users)} moved")
        self.assertLess(frac, 0.42, f"{len(moved)} of {len(users)} moved")

    def test_hash_cookie_and_client_ip_fallback(self):
        """cookie:session hashes the cookie's value (same server wherever the
        cookie sits in the header); a request without the header/cookie
        falls back to the client address: stable per source address, spread
        over several addresses, and the same server the client_ip pool picks."""
        bs = self.start_backends("a", "b", "c", "d")
        servers = [(x.addr, 1) for x in bs]
        pools = [{"name": "ck", "strategy": "hash", "hash_key": "cookie:session", "servers": servers},
                 {"name": "hd", "strategy": "hash", "hash_key": "header:X-User", "servers": servers},
                 {"name": "ip", "strategy": "hash", "hash_key": "client_ip", "servers": servers}]
        routes = [("*", "/ck", "ck"), ("*", "/hd", "hd"), ("*", "/ip", "ip")]
        self._lbd(pools, routes=routes, admin=False)

        sessions = [f"s{i:04d}x" for i in range(60)]
        forms = ["session={}", "a=1; session={}", "session={}; z=2", "sessionx=zz; session={}; b=3"]
        jobs = [("/ck", [("Cookie", f.format(s))]) for f in forms for s in sessions]
        res = run_requests(self.lbd.listen, jobs, nthreads=6)
        seen = {}
        for (_, hdrs), r in zip(jobs, res):
            self.assertEqual(r[0], 200, r)
            sid = hdrs[0][1].split("session=")[-1].split(";")[0]
            seen.setdefault(sid, set()).add(r[1])
        for sid, where in seen.items():
            self.assertEqual(len(where), 1, f"session {sid} landed on {where}")
        self.assertGreaterEqual(len({next(iter(w)) for w in seen.values()}), 3,
                                "60 sessions spread over at least 3 of 4 servers")

        # No header / no cookie: the client address decides.
        srcs = [f"127.0.0.{i}" for i in range(2, 42)]
        by_src = {}
        for src in srcs:
            got = set()
            for path, hdrs in (("/hd", ()), ("/ck", [("Cookie", "other=1")]), ("/hd", ()),
                               ("/ip", ())):
                with HttpConn(self.lbd.listen, source=src) as conn:
                    r = conn.request(path, headers=hdrs)
                self.assertEqual(r.status, 200, r)
                got.add(r.backend)
            self.assertEqual(len(got), 1, f"client {src} without a key went to {got}")
            by_src[src] = got.pop()
        self.assertGreaterEqual(len(set(by_src.values())), 2,
                                f"40 client addresses all on one server: {by_src}")

    # -- least_connections, least_time vs a slow server --------------------

    def _slow_fast_run(self, strategy, total, nthreads=8):
        slow = PyServer("slow", delay=0.3)
        self.addCleanup(slow.stop)
        (fast,) = self.start_backends("fast")
        self._lbd([{"name": "web", "strategy": strategy,
                    "servers": [(slow.addr, 1), (fast.addr, 1)]}], admin=False)
        per, bad = tally(run_requests(self.lbd.listen, [("/", ())] * total, nthreads=nthreads))
        self.assertEqual(bad, [], f"{strategy}: failed requests")
        self.assertEqual(sum(per.values()), total)
        self.assertEqual(per.get("slow", 0), slow.count(), "the slow server's own count agrees")
        return per.get("fast", 0), per.get("slow", 0)

    def test_least_connections_prefers_the_fast_server(self):
        """8 concurrent clients, one server answering after 300 ms: the fast
        one takes clearly more than twice as many requests."""
        fast, slow = self._slow_fast_run("least_connections", 240)
        self.assertGreater(fast, 2 * slow, f"fast {fast}, slow {slow}")
        self.assertGreater(slow, 0, "the slow server is not excluded, only less loaded")

    def test_least_time_prefers_the_fast_server(self):
        fast, slow = self._slow_fast_run("least_time", 240)
        self.assertGreater(fast, 2 * slow, f"fast {fast}, slow {slow}")

    def test_round_robin_control_splits_evenly(self):
        """The same setup under round_robin: exactly half each (the cursor
        is global), whatever the speed."""
        fast, slow = self._slow_fast_run("round_robin", 48)
        self.assertEqual((fast, slow), (24, 24))

    def _hold_requests(self, weights, n=8, workers=4):
        """N requests held 1.5 s by their backend, started one at a time,
        each once the earlier ones are in flight (whichever worker took
        them). Returns {backend: count}."""
        a, b = self.start_backends("a", "b")
        self._lbd([{"name": "web", "strategy": "least_connections",
                    "servers": [(a.addr, weights[0]), (b.addr, weights[1])]}], workers=workers)
        out = []
        lock = threading.Lock()

        def one():
            try:
                r = self.get("/?delay=1500")
                res = (r.status, r.backend)
            except Exception as e:  # noqa: BLE001 - reported
                res = ("error", repr(e))
            with lock:
                out.append(res)

        def in_flight():
            return sum(s["in_flight"] for s in admin_status(self.admin)["pools"][0]["servers"])
        threads = []
        for i in range(n):
            t = threading.Thread(target=one, daemon=True)
            t.start()
            threads.append(t)
            wait_for(lambda: in_flight() >= i + 1, 10, what=f"{i + 1} requests in flight")
        for t in threads:
            t.join(30)
        per, bad = tally(out)
        self.assertEqual(bad, [])
        return per

    def test_least_connections_counts_across_workers(self):
        """4 workers, 2 equal servers, 8 long requests started one after the
        other: 4 and 4, which needs the in-flight counts of every worker."""
        self.assertEqual(self._hold_requests((1, 1)), {"a": 4, "b": 4})

    def test_least_connections_is_weighted(self):
        """Weights 3 and 1: 8 long requests split by in-flight per weight:
        6:2 (whichever way the ties at 2:0 and 5:1 break)."""
        self.assertEqual(self._hold_requests((3, 1)), {"a": 6, "b": 2})
