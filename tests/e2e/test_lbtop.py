"""lbtop: the live viewer of lbd's shared memory. Batch mode (-b) frames
checked against the load a test sent (counts, never timings), a killed
backend shown DOWN, re-attaching across a reload and a restart, the message
when no lbd runs; the interactive screen driven under tmux."""
import json
import os
import re
import signal
import subprocess
import time

from lbdtest import LbdTestCase, free_port, http_get, wait_for
from lbdextra import ext_config, kill_backend, run_requests, tally

TMUX = "/usr/bin/tmux"

HTTP_CHECK = {"path": "/healthz", "interval": "200ms", "timeout": "200ms", "rise": 1, "fall": 1}

# A server row: address, health, breaker, weight, state, requests, ...
SERVER_ROW = re.compile(r"^\s+(\S+:\d+)\s+(UP|DOWN)\s+(closed|open|half)\s+(\d+)(\*?)\s+(\S+)"
                        r"\s+(\d+)\s")
WORKER_ROW = re.compile(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+(running|draining)\s+(\d+)\s+(\d+)\s+(\d+)"
                        r"\s+(\d+)\s+(\S+)\s+(\d+)\s*$")
TITLE = re.compile(r"^lbtop \d\d:\d\d:\d\d - (\S+)(?:  master (\d+)  generation (\d+))?")


def frames(text):
    """Split batch output into frames (each begins with its title line)."""
    out = []
    for ln in text.splitlines():
        if TITLE.match(ln):
            out.append([])
        if out:
            out[-1].append(ln)
    return out


def parse_frame(lines):
    """{"master": pid or None, "generation", "servers": {(pool, address):
    {...}}, "workers": [...], "text"}."""
    m = TITLE.match(lines[0])
    f = {"master": int(m.group(2)) if m.group(2) else None,
         "generation": int(m.group(3)) if m.group(3) else None,
         "servers": {}, "workers": [], "text": "\n".join(lines)}
    section, pool = None, None
    for ln in lines[1:]:
        if ln.startswith("== "):
            section = ln.strip("= ")
            continue
        pm = re.match(r"^pool (\S+): ", ln)
        if pm:
            pool = pm.group(1)
            continue
        if section == "servers":
            sm = SERVER_ROW.match(ln)
            if sm:
                f["servers"][(pool, sm.group(1))] = {
                    "health": sm.group(2), "breaker": sm.group(3), "weight": int(sm.group(4)),
                    "override": sm.group(5) == "*", "state": sm.group(6),
                    "requests": int(sm.group(7))}
        elif section == "workers":
            wm = WORKER_ROW.match(ln)
            if wm:
                f["workers"].append({"id": int(wm.group(1)), "pid": int(wm.group(3)),
                                     "requests": int(wm.group(8)),
                                     "restarts": int(wm.group(10))})
    return f


class LbtopTest(LbdTestCase):

    def setUp(self):
        super().setUp()
        if not os.access(self.lbtop_bin, os.X_OK):
            self.fail(f"{self.lbtop_bin} is not an executable: run `make` first")

    def _start(self, n=3, pools=None, workers=2, extra=""):
        self.bs = self.start_backends(*[f"b{i}" for i in range(1, n + 1)])
        self.listen = f"127.0.0.1:{free_port()}"
        self.pools = pools or [{"name": "web", "servers": [(b.addr, 1) for b in self.bs],
                                "health_check": HTTP_CHECK}]
        self.cfg = ext_config(self.listen, self.pools, workers=workers, extra=extra)
        return self.start_lbd(self.cfg, self.listen, workers=workers)

    def lbtop(self, *args, config=None, check=True):
        p = subprocess.run([self.lbtop_bin, "-c", config or self.lbd.config_path, "-b"] +
                           list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"lbtop exited {p.returncode}: {p.stderr.decode()}")
        return p

    def frame(self):
        """One batch frame, parsed."""
        out = self.lbtop("-n", "1").stdout.decode()
        fs = frames(out)
        self.assertEqual(len(fs), 1, out)
        return parse_frame(fs[0])

    # -- batch ----------------------------------------------------------------

    def test_batch_counts_match_the_load(self):
        """After 90 requests over three servers, a frame shows 30 requests on
        each, 90 over the workers, and the master's pid; -n 3 prints three
        frames."""
        lbd = self._start()
        n = 90
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * n, nthreads=3))
        self.assertEqual(bad, [])

        def settled():
            f = self.frame()
            return f if sum(w["requests"] for w in f["workers"]) == n else None
        f = wait_for(settled, 10, interval=0.1, what=f"lbtop to count {n} requests")
        self.assertEqual(f["master"], lbd.pid)
        self.assertEqual(sorted(f["servers"]), sorted(("web", b.addr) for b in self.bs))
        for b in self.bs:
            s = f["servers"][("web", b.addr)]
            self.assertEqual(s["requests"], n // 3, f["text"])
            self.assertEqual((s["health"], s["breaker"], s["weight"], s["state"]),
                             ("UP", "closed", 1, "ready"), f["text"])
        snap = lbd.snapshot()
        self.assertEqual(sorted(w["pid"] for w in f["workers"]),
                         sorted(w["pid"] for w in snap["workers"]))
        out = self.lbtop("-n", "3", "-d", "0.1").stdout.decode()
        fs = frames(out)
        self.assertEqual(len(fs), 3, out)
        # From the second frame on, rates: no load now, so 0.0 req/s each.
        second = fs[1]
        rows = [ln for ln in second if SERVER_ROW.match(ln)]
        self.assertEqual(len(rows), 3)
        for ln in rows:
            self.assertEqual(ln.split()[6], "0.0", second)

    def test_killed_backend_shows_down(self):
        lbd = self._start()
        wait_for(lambda: all(s["health"] == "UP" for s in self.frame()["servers"].values()),
                 10, interval=0.1, what="every server UP")
        kill_backend(self.bs[1])

        def down():
            f = self.frame()
            return f if f["servers"][("web", self.bs[1].addr)]["health"] == "DOWN" else None
        f = wait_for(down, 15, interval=0.1, what="lbtop to show the killed backend DOWN")
        self.assertEqual(f["servers"][("web", self.bs[0].addr)]["health"], "UP")
        self.assertEqual(f["servers"][("web", self.bs[2].addr)]["health"], "UP")
        self.assertIn("2/3 up", f["text"])
        self.assertIsNotNone(lbd)

    def test_runtime_state_and_weight(self):
        """What the admin API sets shows at the next frame: maint and drain
        in STATE, a runtime weight marked '*'; DELETE brings the file's back."""
        token = "lbtop-token-42"
        admin = f"127.0.0.1:{free_port()}"
        self._start(extra=f'admin = {{ address = "{admin}"; token = "{token}"; }};')
        auth = [("Authorization", f"Bearer {token}"), ("Content-Type", "application/json")]

        def api(b, method, body=None):
            r = http_get(admin, f"/api/pools/web/servers/{b.addr}", host="admin.test",
                         method=method, headers=auth,
                         body=json.dumps(body).encode() if body is not None else None)
            self.assertEqual(r.status, 200, r.body)
        api(self.bs[0], "PUT", {"state": "maint"})
        api(self.bs[1], "PUT", {"state": "drain", "weight": 7})
        f = self.frame()
        s0, s1, s2 = (f["servers"][("web", b.addr)] for b in self.bs)
        self.assertEqual((s0["state"], s0["weight"], s0["override"]), ("maint", 1, False))
        self.assertEqual((s1["state"], s1["weight"], s1["override"]), ("drain", 7, True))
        self.assertEqual((s2["state"], s2["weight"], s2["override"]), ("ready", 1, False))
        api(self.bs[1], "DELETE")
        s1 = self.frame()["servers"][("web", self.bs[1].addr)]
        self.assertEqual((s1["state"], s1["weight"], s1["override"]), ("ready", 1, False))

    def test_runtime_servers_by_address(self):
        """A pool with max_servers: its empty runtime slots are no rows; a
        server added through the admin API shows under its address, with
        the weight it was added with (no override mark), and its row goes
        once it is removed and drained."""
        token = "lbtop-token-42"
        admin = f"127.0.0.1:{free_port()}"
        self.bs = self.start_backends("b1", "b2")
        self.listen = f"127.0.0.1:{free_port()}"
        pools = [{"name": "web", "max_servers": 4, "servers": [(self.bs[0].addr, 1)]}]
        cfg = ext_config(self.listen, pools, workers=2,
                         extra=f'admin = {{ address = "{admin}"; token = "{token}"; }};')
        self.start_lbd(cfg, self.listen, workers=2)
        self.assertEqual(set(self.frame()["servers"]), {("web", self.bs[0].addr)})
        auth = [("Authorization", f"Bearer {token}"), ("Content-Type", "application/json")]
        r = http_get(admin, "/api/pools/web/servers", host="admin.test", method="POST",
                     headers=auth, body=json.dumps({"address": self.bs[1].addr,
                                                    "weight": 2}).encode())
        self.assertEqual(r.status, 201, r.body)
        f = self.frame()
        self.assertEqual(set(f["servers"]), {("web", b.addr) for b in self.bs})
        s1 = f["servers"][("web", self.bs[1].addr)]
        self.assertEqual((s1["weight"], s1["override"], s1["state"]), (2, False, "ready"))
        self.assertNotIn("runtime#", f["text"])
        r = http_get(admin, f"/api/pools/web/servers/{self.bs[1].addr}", host="admin.test",
                     method="DELETE", headers=auth)
        self.assertEqual(r.status, 200, r.body)
        wait_for(lambda: set(self.frame()["servers"]) == {("web", self.bs[0].addr)}, 20,
                 interval=0.5, what="the removed server's row to go")

    def test_no_instance(self):
        """No lbd for the file: a clear message and exit status 1 at once; a
        file that does not exist: the same status."""
        path = self.write_file(self.path("idle.conf"), "workers = 1;\n")
        p = self.lbtop("-n", "1", config=path, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout, b"")
        self.assertIn(f"no lbd running for {os.path.realpath(path)}", p.stderr.decode())
        p = self.lbtop("-n", "1", config=self.path("missing.conf"), check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("No such file", p.stderr.decode())

    def test_survives_reload_and_restart(self):
        """One lbtop run in batch mode across a reload that adds a server and
        an lbd stopped and started again on the same file: it shows the new
        server under the same master, says that no lbd runs while none does,
        then re-attaches to the new master with its counters."""
        lbd = self._start(n=2)
        out_path = self.path("lbtop.out")
        with open(out_path, "wb") as out:
            top = subprocess.Popen([self.lbtop_bin, "-c", lbd.config_path, "-b", "-n", "600",
                                    "-d", "0.1"], stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: top.poll() is None and (top.kill(), top.wait()))

        def seen(cond, what):
            def probe():
                with open(out_path) as f:
                    fs = [parse_frame(x) for x in frames(f.read())[:-1]]   # last may be partial
                return fs if cond(fs) else None
            return wait_for(probe, 20, interval=0.1, what=what)

        seen(lambda fs: fs and fs[-1]["master"] == lbd.pid, "a first frame")
        b3 = self.start_backend("b3")
        pools = [dict(self.pools[0], servers=[(b.addr, 1) for b in self.bs + [b3]])]
        cfg = ext_config(self.listen, pools, workers=2)
        lbd.reload(cfg)
        fs = seen(lambda fs: ("web", b3.addr) in fs[-1]["servers"], "the reload's new server")
        self.assertEqual(fs[-1]["master"], lbd.pid)
        self.assertGreater(fs[-1]["generation"], fs[0]["generation"])

        lbd.stop()
        seen(lambda fs: fs[-1]["master"] is None and "no lbd running" in fs[-1]["text"],
             "a frame saying that no lbd runs")
        lbd2 = self.start_lbd(cfg, self.listen, workers=2)
        self.assertEqual(lbd2.config_path, lbd.config_path)
        n = 12
        per, bad = tally(run_requests(lbd2.listen, [("/", ())] * n, nthreads=2))
        self.assertEqual(bad, [])
        fs = seen(lambda fs: fs[-1]["master"] == lbd2.pid and
                  sum(w["requests"] for w in fs[-1]["workers"]) == n,
                  f"lbtop to re-attach to the new master and count its {n} requests")
        self.assertEqual(sum(s["requests"] for s in fs[-1]["servers"].values()), n)
        self.assertIsNone(top.poll(), "lbtop kept running")
        top.send_signal(signal.SIGTERM)
        self.assertEqual(top.wait(10), 0)

    # -- interactive, under tmux ------------------------------------------------

    def test_tmux_views_and_quit(self):
        """The ncurses screen: started before lbd, it says that none runs,
        then attaches; the servers view first; s changes the sort column, p
        pauses; Tab shows the workers (their pids), 3 the rate limits, 1 the
        servers again; q quits."""
        if not os.access(TMUX, os.X_OK):
            self.skipTest("tmux is not installed (make deps)")
        limit = ('rate_limits = ( { name = "perip"; key = "client_ip"; rate = "100r/s"; '
                 'burst = 50; } );')
        self.bs = self.start_backends("b1", "b2")
        self.listen = f"127.0.0.1:{free_port()}"
        cfg = ext_config(self.listen, [{"name": "web", "servers": [(b.addr, 1) for b in self.bs],
                                        "health_check": HTTP_CHECK}], workers=2, extra=limit)
        conf = self.write_file(self.path("lbd.conf"), cfg)
        sock = f"lbtop-test-{os.getpid()}-{free_port()}"

        def tmux(*args, check=True):
            return subprocess.run([TMUX, "-L", sock, "-f", "/dev/null"] + list(args),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10,
                                  check=check)
        tmux("new-session", "-d", "-x", "160", "-y", "40", "-s", "top",
             f"{self.lbtop_bin} -c {conf} -d 0.3")
        self.addCleanup(lambda: tmux("kill-server", check=False))

        def screen():
            return tmux("capture-pane", "-p", "-t", "top").stdout.decode()

        def shows(*words, absent=()):
            def probe():
                s = screen()
                return s if all(w in s for w in words) and not any(w in s for w in absent) \
                    else None
            return wait_for(probe, 10, interval=0.1, what=f"the screen to show {words}")

        shows("no lbd running for", "waiting for one")
        lbd = self.start_lbd(cfg, self.listen, workers=2)
        shows("pool web", self.bs[0].addr, self.bs[1].addr, "HEALTH", f"master {lbd.pid}",
                  "sort: address")
        tmux("send-keys", "-t", "top", "s")
        shows("sort: req/s")
        tmux("send-keys", "-t", "top", "p")
        shows("[paused]")
        tmux("send-keys", "-t", "top", "p")
        shows("HEALTH", absent=("[paused]",))
        tmux("send-keys", "-t", "top", "Tab")
        pids = [str(w["pid"]) for w in lbd.snapshot()["workers"]]
        shows("RESTARTS", *pids, absent=("HEALTH",))
        tmux("send-keys", "-t", "top", "3")
        shows("perip", "client_ip", "100r/s", absent=("RESTARTS", "HEALTH"))
        tmux("send-keys", "-t", "top", "1")
        shows("HEALTH", self.bs[0].addr, absent=("RESTARTS",))
        tmux("send-keys", "-t", "top", "q")
        wait_for(lambda: tmux("has-session", "-t", "top", check=False).returncode != 0, 10,
                 interval=0.1, what="lbtop to quit on q (its tmux session to end)")
