"""Service discovery (issue 18): runtime servers from DNS, against a real
dnsmasq that each test starts on a free loopback port with its own hosts
file and SRV records. dnsmasq re-reads --addn-hosts files on SIGHUP; its
--srv-host records come from the command line, so a test that changes them
restarts it on the same port."""
import base64
import http.server
import json
import threading
import urllib.parse
import os
import shutil
import urllib.request
import signal
import subprocess
import time
import unittest

from lbdtest import Backend, LbdTestCase, free_port, http_get, wait_for
from lbdextra import (Load, admin_metrics, admin_status, control_pids, ext_config, run_requests,
                      tally)
from zkclient import ZkClient

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ZK_JAR = "/usr/share/java/zookeeper.jar"


class Dnsmasq:
    """dnsmasq answering for *.test from HOSTS (a file) and SRV records,
    nothing else (--local: NXDOMAIN for names it does not have)."""

    def __init__(self, tc, hosts, srv=(), ttl=1, log_queries=False):
        self.tc = tc
        self.log_queries = log_queries
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.hosts_path = tc.path("hosts")
        self.srv = list(srv)
        self.ttl = ttl
        self.proc = None
        self.set_hosts(hosts, signal_it=False)
        self.start()

    def set_hosts(self, lines, signal_it=True):
        self.tc.write_file(self.hosts_path, "".join(f"{ip} {name}\n" for ip, name in lines))
        if signal_it:
            self.proc.send_signal(signal.SIGHUP)

    def start(self):
        args = [DNSMASQ, "--no-daemon", f"--port={self.port}", "--listen-address=127.0.0.1",
                "--bind-interfaces", "--no-resolv", "--no-hosts", "--local=/test/",
                f"--addn-hosts={self.hosts_path}", f"--local-ttl={self.ttl}", "--pid-file=",
                "--conf-file=/dev/null", "--log-facility=-"]
        args += [f"--srv-host={s}" for s in self.srv]
        if self.log_queries:
            args.append("--log-queries")
        self.log_path = self.tc.path(f"dnsmasq-{time.monotonic_ns()}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        wait_for(lambda: self._answers(), 10, what="dnsmasq to answer")

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"dnsmasq exited: {self.proc.returncode}")
        r = subprocess.run(["dig", f"@127.0.0.1", "-p", str(self.port), "+short", "+time=1",
                            "+tries=1", "probe.test"], capture_output=True)
        return r.returncode == 0

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None
        self.log.close()

    def queries(self, name):
        """Queries for NAME dnsmasq logged (log_queries)."""
        with open(self.log_path, "rb") as f:
            return sum(1 for ln in f if b"query[" in ln and name.encode() in ln)

    def restart(self, srv=None):
        if srv is not None:
            self.srv = list(srv)
        self.stop()
        self.start()


def backend_count(b):
    """Requests B served: each call's own /stats request counts, so two
    calls with nothing between differ by one."""
    return b.stats()["requests"]


class DnsDiscoveryTest(LbdTestCase):

    def setUp(self):
        super().setUp()
        if not os.access(DNSMASQ, os.X_OK) or shutil.which("dig") is None:
            self.skipTest("dnsmasq or dig missing (make deps)")
        self.dns = None
        self.addCleanup(self._stop_dns)

    def _stop_dns(self):
        if self.dns is not None:
            self.dns.stop()

    def _backends(self, port, *ips):
        bs = []
        for i, ip in enumerate(ips):
            b = Backend(self, f"b{ip.split('.')[-1]}", port=port, host=ip)
            self.backends.append(b)
            bs.append(b)
        return bs

    def _lbd(self, discovery, strategy="round_robin", workers=2, more=None, token=None):
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        d = {"type": "dns", "resolvers": [self.dns.addr], "min_interval": "200ms",
             "max_interval": "1s", "timeout": "300ms"}
        d.update(discovery)
        pool = {"name": "web", "strategy": strategy, "discovery": d}
        pool.update(more or {})
        if token is None:
            cfg = ext_config(listen, [pool], workers=workers, admin=self.admin)
        else:
            cfg = ext_config(listen, [pool], workers=workers,
                             extra=f'admin = {{ address = "{self.admin}"; token = "{token}"; }};')
        return self.start_lbd(cfg, listen, workers=workers)

    def _servers(self):
        pool = [p for p in admin_status(self.admin)["pools"] if p["name"] == "web"][0]
        return pool

    def _wait_set(self, want, timeout=15):
        """Wait until the pool's active runtime servers are exactly WANT."""
        def probe():
            p = self._servers()
            got = {s["address"] for s in p["servers"] if s.get("runtime") == "active"}
            return got == set(want)
        wait_for(probe, timeout, what=f"the pool's servers to be {sorted(want)}")

    def test_a_records_change_drain_and_outage(self):
        port = free_port()
        b2, b3, b4 = self._backends(port, "127.0.0.2", "127.0.0.3", "127.0.0.4")
        self.dns = Dnsmasq(self, [("127.0.0.2", "web.test"), ("127.0.0.3", "web.test")])
        lbd = self._lbd({"name": "web.test", "port": port, "record": "A"})
        self._wait_set([b2.addr, b3.addr])
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 40, nthreads=2))
        self.assertEqual(bad, [])
        self.assertEqual(per, {"b2": 20, "b3": 20})
        # from here a keep-alive client runs through every change
        load = Load(lbd.listen, nthreads=2, max_seconds=120)
        try:

            # a third server: it gets traffic
            self.dns.set_hosts([("127.0.0.2", "web.test"), ("127.0.0.3", "web.test"),
                                ("127.0.0.4", "web.test")])
            self._wait_set([b2.addr, b3.addr, b4.addr])
            per, bad = tally(run_requests(lbd.listen, [("/", ())] * 30, nthreads=2))
            self.assertEqual(bad, [])
            self.assertEqual(set(per), {"b2", "b3", "b4"})

            # one removed: it drains, no new request reaches it
            off = lbd.log_size()
            self.dns.set_hosts([("127.0.0.3", "web.test"), ("127.0.0.4", "web.test")])
            self._wait_set([b3.addr, b4.addr])
            lbd.wait_log(r"pool 'web': discovery \(dns web.test\): 2 server\(s\): 0 added, "
                         r"1 removed", since=off)
            servers = self._servers()["servers"]
            srv = [s for s in servers if s["address"] == b2.addr]
            self.assertEqual(len(srv), 1)
            self.assertEqual(srv[0]["runtime"], "draining")
            self.assertEqual(srv[0]["weight"], 0)
            # /status marks it "removed" as GET /api/pools does, and only it
            self.assertEqual([s["address"] for s in servers if s["removed"]], [b2.addr])
            time.sleep(0.3)     # requests of the load picked just before may end
            before = backend_count(b2)
            per, bad = tally(run_requests(lbd.listen, [("/", ())] * 60, nthreads=2))
            self.assertEqual(bad, [])
            self.assertEqual(set(per), {"b3", "b4"})
            self.assertEqual(backend_count(b2), before + 1, "a removed server got new requests")

            # the registry goes away: the set stays, logged once, counted
            off = lbd.log_size()
            self.dns.stop()
            lbd.wait_log(r"pool 'web': discovery \(dns web.test\): .*the last set stays",
                         since=off)
            time.sleep(1.5)     # several failed rounds
            self.assertEqual(lbd.log_since(off).count("the last set stays"), 1,
                             "an outage is logged once")
            per, bad = tally(run_requests(lbd.listen, [("/", ())] * 40, nthreads=2))
            self.assertEqual(bad, [])
            self.assertEqual(set(per), {"b3", "b4"})
            m = admin_metrics(self.admin)
            self.assertGreaterEqual(m.value("lbd_discovery_errors_total", pool="web", type="dns"), 2)
            self.assertGreater(m.value("lbd_discovery_last_success_seconds", pool="web"), 0)
            disco = self._servers()["discovery"]
            self.assertEqual(disco["type"], "dns")
            self.assertEqual(disco["source"], "A web.test")
            self.assertTrue(disco["failing"])

            # back: updates resume
            off = lbd.log_size()
            self.dns.start()
            lbd.wait_log(r"discovery \(dns web.test\) answers again", since=off)
            self.dns.set_hosts([("127.0.0.2", "web.test"), ("127.0.0.4", "web.test")])
            self._wait_set([b2.addr, b4.addr])
            self.assertFalse(self._servers()["discovery"]["failing"])
        finally:
            recs = load.stop()
        failed = [r for r in recs if r[2] != 200]
        self.assertEqual(failed, [], "the keep-alive client saw failed requests")
        self.assertGreater(len(recs), 100)

    def test_srv_weights_priority_and_removal(self):
        b1, b2, b3 = (Backend(self, n) for n in ("s1", "s2", "s3"))
        self.backends += [b1, b2, b3]
        hosts = [("127.0.0.1", "h1.test")]
        srv = [f"_http._tcp.web.test,h1.test,{b1.port},0,1",
               f"_http._tcp.web.test,h1.test,{b2.port},0,3",
               f"_http._tcp.web.test,h1.test,{b3.port},1,1"]       # a backup: priority 1
        self.dns = Dnsmasq(self, hosts, srv=srv)
        lbd = self._lbd({"name": "_http._tcp.web.test", "record": "SRV"},
                        strategy="weighted_round_robin")
        self._wait_set([b1.addr, b2.addr])
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 80, nthreads=1))
        self.assertEqual(bad, [])
        self.assertEqual(per, {"s1": 20, "s2": 60}, "SRV weights 1:3, priority 1 left out")

        # one record removed (dnsmasq restarted: SRV records are not reloaded)
        off = lbd.log_size()
        self.dns.restart(srv=srv[1:])
        self._wait_set([b2.addr])
        lbd.wait_log(r"1 removed", since=off)
        time.sleep(0.2)
        before = backend_count(b1)
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 30, nthreads=2))
        self.assertEqual(bad, [])
        self.assertEqual(per, {"s2": 30})
        self.assertEqual(backend_count(b1), before + 1, "a removed server got new requests")

    def test_ttl_respected(self):
        """With a TTL of 3 s and min_interval 100 ms, the name is asked about
        once per TTL, not every min_interval (dnsmasq logs each query)."""
        port = free_port()
        b2, = self._backends(port, "127.0.0.2")
        self.dns = Dnsmasq(self, [("127.0.0.2", "web.test")], ttl=3, log_queries=True)
        lbd = self._lbd({"name": "web.test", "port": port, "min_interval": "100ms",
                         "max_interval": "30s"})
        self._wait_set([b2.addr])
        before = self.dns.queries("web.test")
        time.sleep(2.0)
        asked = self.dns.queries("web.test") - before
        self.assertLessEqual(asked, 1, "asked again before the TTL ran out")
        # and again once it has: the set follows a change
        self.dns.set_hosts([("127.0.0.3", "web.test")])
        b3, = self._backends(port, "127.0.0.3")
        self._wait_set([b3.addr])
        self.assertGreaterEqual(self.dns.queries("web.test") - before, 1)

    def test_removed_server_finishes_its_requests(self):
        """A request in flight to a server that leaves the set completes
        from it; new ones go elsewhere."""
        port = free_port()
        b2, b3 = self._backends(port, "127.0.0.2", "127.0.0.3")
        self.dns = Dnsmasq(self, [("127.0.0.2", "web.test")])
        lbd = self._lbd({"name": "web.test", "port": port})
        self._wait_set([b2.addr])
        out = []
        t = threading.Thread(target=lambda: out.append(http_get(lbd.listen, "/?delay=1500")),
                             daemon=True)
        t.start()
        wait_for(lambda: any(s["in_flight"] > 0 for s in self._servers()["servers"]), 10,
                 what="the slow request in flight")
        self.dns.set_hosts([("127.0.0.3", "web.test")])
        self._wait_set([b3.addr])
        servers = self._servers()["servers"]
        srv = [s for s in servers if s["address"] == b2.addr][0]
        self.assertEqual(srv["runtime"], "draining")
        # while it drains /status says "removed" of it, as GET /api/pools does
        self.assertEqual({s["address"]: s["removed"] for s in servers},
                         {b2.addr: True, b3.addr: False})
        t.join(15)
        self.assertEqual(len(out), 1)
        self.assertEqual((out[0].status, out[0].backend), (200, "b2"))
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 10, nthreads=1))
        self.assertEqual((per, bad), ({"b3": 10}, []))

    def test_admin_api_drains_and_weighs_discovered_servers(self):
        """The admin API sees discovered servers under their address: PUT
        drain, and the server gets no new request; a weight override holds
        over the next DNS answers (which still give weight 1); GET
        /api/pools lists them, not their slots."""
        port = free_port()
        b2, b3 = self._backends(port, "127.0.0.2", "127.0.0.3")
        self.dns = Dnsmasq(self, [("127.0.0.2", "web.test"), ("127.0.0.3", "web.test")],
                           log_queries=True)
        lbd = self._lbd({"name": "web.test", "port": port}, strategy="weighted_round_robin",
                        token="tok")
        self._wait_set([b2.addr, b3.addr])
        auth = [("Authorization", "Bearer tok"), ("Content-Type", "application/json")]

        def api(method, path, body=None):
            r = http_get(self.admin, path, host="admin.test", method=method, headers=auth,
                         body=json.dumps(body).encode() if body is not None else None)
            self.assertEqual(r.status, 200, r.body)
            return json.loads(r.body)
        pools = api("GET", "/api/pools")["pools"]
        self.assertEqual(sorted(s["address"] for s in pools[0]["servers"]),
                         sorted([b2.addr, b3.addr]))
        api("PUT", f"/api/pools/web/servers/{b2.addr}", {"state": "drain"})
        before = backend_count(b2)
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 30, nthreads=2))
        self.assertEqual((per, bad), ({"b3": 30}, []))
        self.assertEqual(backend_count(b2), before + 1)
        api("PUT", f"/api/pools/web/servers/{b2.addr}", {"state": "ready", "weight": 3})
        asked = self.dns.queries("web.test")
        wait_for(lambda: self.dns.queries("web.test") >= asked + 3, 15,
                 what="three more DNS answers")
        srv = api("GET", f"/api/pools/web/servers/{b2.addr}")
        self.assertEqual((srv["runtime"]["weight"], srv["weight_override"], srv["file"]["weight"]),
                         (3, 3, 1))
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 40, nthreads=2))
        self.assertEqual(bad, [])
        self.assertGreaterEqual(per.get("b2", 0), 27, per)     # 3:1 is 30:10

    def test_health_checks_discovered_servers(self):
        """A discovered server that does not answer goes DOWN by its health
        check and gets no request."""
        port = free_port()
        b2, = self._backends(port, "127.0.0.2")       # 127.0.0.3: nobody listens
        self.dns = Dnsmasq(self, [("127.0.0.2", "web.test"), ("127.0.0.3", "web.test")])
        lbd = self._lbd({"name": "web.test", "port": port},
                        more={"health_check": {"interval": "200ms", "timeout": "200ms",
                                               "rise": 1, "fall": 1}})
        dead = f"127.0.0.3:{port}"
        self._wait_set([b2.addr, dead])
        wait_for(lambda: [s for s in self._servers()["servers"]
                          if s["address"] == dead][0]["health"] == "down", 15,
                 what="the dead server DOWN")
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 20, nthreads=2))
        self.assertEqual((per, bad), ({"b2": 20}, []))

    def test_nxdomain_keeps_the_set_unless_empty_removes(self):
        port = free_port()
        b2, = self._backends(port, "127.0.0.2")
        self.dns = Dnsmasq(self, [("127.0.0.2", "web.test")])
        lbd = self._lbd({"name": "web.test", "port": port})
        self._wait_set([b2.addr])
        off = lbd.log_size()
        self.dns.set_hosts([])
        lbd.wait_log(r"discovery \(dns web.test\): NXDOMAIN; the last set stays", since=off)
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 10, nthreads=1))
        self.assertEqual((per, bad), ({"b2": 10}, []))

    def test_empty_removes(self):
        port = free_port()
        b2, = self._backends(port, "127.0.0.2")
        self.dns = Dnsmasq(self, [("127.0.0.2", "web.test")])
        lbd = self._lbd({"name": "web.test", "port": port, "empty_removes": True})
        self._wait_set([b2.addr])
        self.dns.set_hosts([])
        self._wait_set([])
        r = http_get(lbd.listen, "/")
        self.assertEqual(r.status, 503)


class Etcd:
    """A one-member etcd on free loopback ports with its own data dir;
    keys written through its JSON gateway."""

    def __init__(self, tc):
        self.tc = tc
        self.port, self.peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = tc.path("etcd-data")
        self.proc = None
        self.start()

    def start(self):
        peer = f"http://127.0.0.1:{self.peer}"
        self.log = open(self.tc.path(f"etcd-{time.monotonic_ns()}.log"), "wb")
        self.proc = subprocess.Popen(
            [ETCD, "--name", "lbd-test", "--data-dir", self.data,
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"lbd-test={peer}", "--log-level", "warn"],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        wait_for(self._up, 30, what="etcd to answer")

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"etcd exited: {self.proc.returncode}")
        try:
            self._post("/v3/kv/range", {"key": self._b64("probe")})
            return True
        except OSError:
            return False

    @staticmethod
    def _b64(s):
        return base64.b64encode(s.encode()).decode()

    def _post(self, path, body):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def put(self, key, value):
        self._post("/v3/kv/put", {"key": self._b64(key), "value": self._b64(value)})

    def delete(self, key):
        self._post("/v3/kv/deleterange", {"key": self._b64(key)})

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        self.log.close()


class EtcdDiscoveryTest(LbdTestCase):

    def setUp(self):
        super().setUp()
        if not os.access(ETCD, os.X_OK):
            self.skipTest("etcd missing (make deps: etcd-server)")
        self.etcd = None
        self.addCleanup(lambda: self.etcd and self.etcd.stop())

    def _servers(self):
        return [p for p in admin_status(self.admin)["pools"] if p["name"] == "web"][0]

    def _wait_set(self, want, timeout=15):
        def probe():
            got = {s["address"] for s in self._servers()["servers"]
                   if s.get("runtime") == "active"}
            return got == set(want)
        wait_for(probe, timeout, what=f"the pool's servers to be {sorted(want)}")

    def test_put_delete_weights_and_restart(self):
        b1, b2, b3, b4 = self.start_backends("e1", "e2", "e3", "e4")
        self.etcd = Etcd(self)
        self.etcd.put("/services/web/a", b1.addr)
        self.etcd.put("/services/web/b", json.dumps({"address": b2.addr}))
        self.etcd.put("/services/other/x", b4.addr)          # not under the prefix
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        pool = {"name": "web", "strategy": "weighted_round_robin",
                "discovery": {"type": "etcd", "endpoints": [self.etcd.url],
                              "prefix": "/services/web/", "min_interval": "200ms",
                              "max_interval": "2s", "timeout": "1s"}}
        lbd = self.start_lbd(ext_config(listen, [pool], workers=2, admin=self.admin), listen,
                             workers=2)
        self._wait_set([b1.addr, b2.addr])
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 40, nthreads=2))
        self.assertEqual((per, bad), ({"e1": 20, "e2": 20}, []))
        load = Load(lbd.listen, nthreads=2, max_seconds=120)
        try:
            # a third one, with a weight
            self.etcd.put("/services/web/c", json.dumps({"address": b3.addr, "weight": 3}))
            self._wait_set([b1.addr, b2.addr, b3.addr])
            srv = {s["address"]: s for s in self._servers()["servers"]}
            self.assertEqual(srv[b3.addr]["weight"], 3)
            per, bad = tally(run_requests(lbd.listen, [("/", ())] * 50, nthreads=2))
            self.assertEqual(bad, [])
            self.assertEqual(set(per), {"e1", "e2", "e3"})

            # garbage values are left out one by one
            off = lbd.log_size()
            self.etcd.put("/services/web/junk", "not an address")
            lbd.wait_log(r"entry /services/web/junk left out", since=off)
            self._wait_set([b1.addr, b2.addr, b3.addr])

            # one deleted: no new request reaches it
            self.etcd.delete("/services/web/a")
            self._wait_set([b2.addr, b3.addr])
            time.sleep(0.3)
            before = backend_count(b1)
            per, bad = tally(run_requests(lbd.listen, [("/", ())] * 40, nthreads=2))
            self.assertEqual(bad, [])
            self.assertEqual(set(per), {"e2", "e3"})
            self.assertEqual(backend_count(b1), before + 1, "a deleted server got new requests")

            # etcd killed: the pool stays
            off = lbd.log_size()
            self.etcd.stop()
            lbd.wait_log(r"pool 'web': discovery \(etcd /services/web/\): .*the last set stays",
                         since=off)
            per, bad = tally(run_requests(lbd.listen, [("/", ())] * 40, nthreads=2))
            self.assertEqual(bad, [])
            self.assertEqual(set(per), {"e2", "e3"})
            self.assertGreaterEqual(admin_metrics(self.admin).value(
                "lbd_discovery_errors_total", pool="web", type="etcd"), 1)

            # restarted: updates resume
            self.etcd.start()
            lbd.wait_log(r"discovery \(etcd /services/web/\) answers again", since=off)
            self.etcd.put("/services/web/a", b1.addr)
            self._wait_set([b1.addr, b2.addr, b3.addr])
            self.assertEqual(lbd.log_since(off).count("the last set stays"), 1,
                             "an outage is logged once")
        finally:
            recs = load.stop()
        failed = [r for r in recs if r[2] != 200]
        self.assertEqual(failed, [], "the keep-alive client saw failed requests")
        self.assertGreater(len(recs), 100)


class ConsulStandIn:
    """NOT Consul: a stand-in serving Consul's documented health endpoint
    (GET /v1/health/service/NAME: a JSON array of {Node, Service, Checks})
    with blocking-query semantics: X-Consul-Index on every answer; a query
    whose ?index= equals the current one is held until the service changes
    or ?wait= passes; ?passing filters instances whose checks all pass. No
    Consul server is packaged for Debian, so the tests use this."""

    def __init__(self, port=None):
        self.cond = threading.Condition()
        self.index = 1
        self.instances = {}         # id -> (address, port, weight, status)
        self.queries = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                u = urllib.parse.urlparse(self.path)
                q = urllib.parse.parse_qs(u.query, keep_blank_values=True)
                if not u.path.startswith("/v1/health/service/"):
                    self.send_error(404)
                    return
                want = int(q.get("index", ["0"])[0] or 0)
                wait = float(q.get("wait", ["300s"])[0].rstrip("s"))
                with outer.cond:
                    outer.queries += 1
                    deadline = time.monotonic() + min(wait, 30)
                    while want == outer.index and time.monotonic() < deadline:
                        outer.cond.wait(deadline - time.monotonic())
                    body = outer._answer("passing" in q)
                    index = outer.index
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Consul-Index", str(index))
                self.send_header("Content-Length", str(len(data)))
                # One query a connection: a stopped stand-in answers no more.
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _answer(self, passing):
        out = []
        for sid, (addr, port, weight, status) in sorted(self.instances.items()):
            if passing and status != "passing":
                continue
            out.append({"Node": {"Node": "node1", "Address": "127.0.0.1"},
                        "Service": {"ID": sid, "Service": "web", "Tags": ["v1"],
                                    "Address": addr, "Port": port,
                                    "Weights": {"Passing": weight, "Warning": 1}},
                        "Checks": [{"CheckID": "serfHealth", "Status": "passing"},
                                   {"CheckID": f"service:{sid}", "Status": status}]})
        return out

    def set(self, sid, addr, port, weight=1, status="passing"):
        with self.cond:
            self.instances[sid] = (addr, port, weight, status)
            self.index += 1
            self.cond.notify_all()

    def remove(self, sid):
        with self.cond:
            del self.instances[sid]
            self.index += 1
            self.cond.notify_all()

    def stop(self):
        with self.cond:
            self.index += 1         # lets held queries go
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()


class ConsulDiscoveryTest(LbdTestCase):
    """Against ConsulStandIn (above), a stand-in, not a real Consul."""

    def _servers(self):
        return [p for p in admin_status(self.admin)["pools"] if p["name"] == "web"][0]

    def _wait_set(self, want, timeout=15):
        def probe():
            got = {s["address"] for s in self._servers()["servers"]
                   if s.get("runtime") == "active"}
            return got == set(want)
        wait_for(probe, timeout, what=f"the pool's servers to be {sorted(want)}")

    def test_blocking_queries_health_and_outage(self):
        b1, b2, b3 = self.start_backends("c1", "c2", "c3")
        consul = ConsulStandIn()
        self.addCleanup(lambda: consul.stop())
        consul.set("web-1", "127.0.0.1", b1.port)
        consul.set("web-2", "", b2.port)            # no Service.Address: the node's
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        pool = {"name": "web", "strategy": "weighted_round_robin",
                "discovery": {"type": "consul", "address": consul.url, "service": "web",
                              "wait": "5s", "min_interval": "200ms", "max_interval": "1s",
                              "timeout": "1s"}}
        lbd = self.start_lbd(ext_config(listen, [pool], workers=2, admin=self.admin), listen,
                             workers=2)
        self._wait_set([b1.addr, b2.addr])
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 40, nthreads=2))
        self.assertEqual((per, bad), ({"c1": 20, "c2": 20}, []))
        self.assertEqual(self._servers()["discovery"]["type"], "consul")
        load = Load(lbd.listen, nthreads=2, max_seconds=120)
        try:
            # blocking: lbd does not poll; a change arrives through the held query
            q0 = consul.queries
            time.sleep(2.0)
            self.assertLessEqual(consul.queries - q0, 1, "lbd polls instead of blocking")
            consul.set("web-3", "127.0.0.1", b3.port, weight=3)
            self._wait_set([b1.addr, b2.addr, b3.addr])
            srv = {s["address"]: s for s in self._servers()["servers"]}
            self.assertEqual(srv[b3.addr]["weight"], 3)

            # a failing check: out (passing_only), no new request reaches it
            consul.set("web-1", "127.0.0.1", b1.port, status="critical")
            self._wait_set([b2.addr, b3.addr])
            time.sleep(0.3)
            before = backend_count(b1)
            per, bad = tally(run_requests(lbd.listen, [("/", ())] * 40, nthreads=2))
            self.assertEqual(bad, [])
            self.assertEqual(set(per), {"c2", "c3"})
            self.assertEqual(backend_count(b1), before + 1)

            # the registry goes away: the set stays
            off = lbd.log_size()
            port = consul.port
            consul.stop()
            lbd.wait_log(r"pool 'web': discovery \(consul web\): .*the last set stays", since=off)
            per, bad = tally(run_requests(lbd.listen, [("/", ())] * 20, nthreads=2))
            self.assertEqual(bad, [])
            self.assertEqual(set(per), {"c2", "c3"})

            # back (a new index sequence): updates resume
            consul2 = ConsulStandIn(port=port)
            self.addCleanup(lambda: consul2.stop())
            consul2.set("web-2", "", b2.port)
            consul2.set("web-1", "127.0.0.1", b1.port)
            lbd.wait_log(r"discovery \(consul web\) answers again", since=off)
            self._wait_set([b1.addr, b2.addr])
        finally:
            recs = load.stop()
        failed = [r for r in recs if r[2] != 200]
        self.assertEqual(failed, [], "the keep-alive client saw failed requests")


class ZkServer:
    """Debian zookeeperd's server (java), standalone, with its own config
    and data dir on a free loopback port. fresh=True on start: a new data
    dir, so every session the clients had is unknown (expired) to it."""

    def __init__(self, tc):
        self.tc = tc
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.n = 0
        self.proc = None
        self.start()

    def start(self, fresh=False):
        if fresh or self.n == 0:
            self.n += 1
        data = self.tc.path(f"zk-data-{self.n}")
        os.makedirs(data, exist_ok=True)
        cfg = self.tc.write_file(self.tc.path("zoo.cfg"), "\n".join([
            "tickTime=500", f"dataDir={data}", f"clientPort={self.port}",
            "clientPortAddress=127.0.0.1", "admin.enableServer=false",
            "minSessionTimeout=1000", "maxSessionTimeout=60000", ""]))
        self.log = open(self.tc.path(f"zk-{time.monotonic_ns()}.log"), "wb")
        self.proc = subprocess.Popen(
            ["java", "-Xmx128m", "-cp", f"{ZK_JAR}:/etc/zookeeper/conf",
             "org.apache.zookeeper.server.ZooKeeperServerMain", cfg],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        wait_for(self._up, 60, what="ZooKeeper to answer")

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"ZooKeeper exited: {self.proc.returncode}")
        try:
            ZkClient(self.addr).close()
            return True
        except OSError:
            return False

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None
        self.log.close()


class ZooKeeperDiscoveryTest(LbdTestCase):

    def setUp(self):
        super().setUp()
        if not os.access(ZK_JAR, os.R_OK) or shutil.which("java") is None:
            self.skipTest("ZooKeeper missing (make deps: zookeeperd)")
        self.zk = None
        self.clients = []
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        for c in self.clients:
            try:
                c.close()
            except OSError:
                pass
        if self.zk is not None:
            self.zk.stop()

    def _client(self):
        c = ZkClient(self.zk.addr)
        self.clients.append(c)
        return c

    def _servers(self):
        return [p for p in admin_status(self.admin)["pools"] if p["name"] == "web"][0]

    def _wait_set(self, want, timeout=30):
        def probe():
            got = {s["address"] for s in self._servers()["servers"]
                   if s.get("runtime") == "active"}
            return got == set(want)
        wait_for(probe, timeout, what=f"the pool's servers to be {sorted(want)}")

    def test_ephemeral_nodes_outage_and_session_expiry(self):
        b1, b2, b3 = self.start_backends("z1", "z2", "z3")
        self.zk = ZkServer(self)
        c1, c2 = self._client(), self._client()
        c1.ensure("/services/web")
        c1.create("/services/web/a", b1.addr, ephemeral=True)
        c2.create("/services/web/b", json.dumps({"address": b2.addr}), ephemeral=True)
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        pool = {"name": "web", "strategy": "weighted_round_robin",
                "discovery": {"type": "zookeeper", "hosts": self.zk.addr,
                              "path": "/services/web", "session_timeout": "3s",
                              "min_interval": "200ms", "max_interval": "1s"}}
        lbd = self.start_lbd(ext_config(listen, [pool], workers=2, admin=self.admin), listen,
                             workers=2)
        self._wait_set([b1.addr, b2.addr])
        per, bad = tally(run_requests(lbd.listen, [("/", ())] * 40, nthreads=2))
        self.assertEqual((per, bad), ({"z1": 20, "z2": 20}, []))
        load = Load(lbd.listen, nthreads=2, max_seconds=180)
        try:
            # a third, then its weight changed (a data watch)
            c2.create("/services/web/c", b3.addr, ephemeral=True)
            self._wait_set([b1.addr, b2.addr, b3.addr])
            c2.set("/services/web/c", json.dumps({"address": b3.addr, "weight": 3}))
            wait_for(lambda: {s["address"]: s["weight"] for s in self._servers()["servers"]}
                     .get(b3.addr) == 3, 30, what="the new weight")

            # c1's session ends: its ephemeral node goes, no new request reaches it
            c1.close()
            self.clients.remove(c1)
            self._wait_set([b2.addr, b3.addr])
            time.sleep(0.3)
            before = backend_count(b1)
            per, bad = tally(run_requests(lbd.listen, [("/", ())] * 40, nthreads=2))
            self.assertEqual(bad, [])
            # The background load shares the round-robin cursor: it may take
            # every z2 turn of these 40; what counts is that none reach z1.
            self.assertLessEqual(set(per), {"z2", "z3"})
            self.assertEqual(backend_count(b1), before + 1)

            # the server killed: the set stays; restarted: lbd's session goes on
            off = lbd.log_size()
            self.zk.stop()
            lbd.wait_log(r"pool 'web': discovery \(zookeeper /services/web\): .*the last set "
                         r"stays", since=off, timeout=30)
            per, bad = tally(run_requests(lbd.listen, [("/", ())] * 20, nthreads=2))
            self.assertEqual(bad, [])
            self.assertLessEqual(set(per), {"z2", "z3"})
            self.assertTrue(per, "the set stayed: requests still served")
            self.zk.start()
            lbd.wait_log(r"discovery \(zookeeper /services/web\) answers again", since=off,
                         timeout=30)

            # lbd's session expires (its control process stopped for longer
            # than session_timeout): a new session, watches set again
            self.clients = []           # c2 lost its connection with the server
            c3 = self._client()
            c3.create("/services/web/a", b1.addr, ephemeral=True)
            ctl = control_pids(lbd)
            self.assertEqual(len(ctl), 1, ctl)
            off = lbd.log_size()
            os.kill(ctl[0], signal.SIGSTOP)
            try:
                time.sleep(5)           # > session_timeout (3s): the server expires it
            finally:
                os.kill(ctl[0], signal.SIGCONT)
            lbd.wait_log(r"discovery \(zookeeper /services/web\): session expired", since=off,
                         timeout=30)
            c3.create("/services/web/c", b3.addr, ephemeral=True)
            self._wait_set([b1.addr, b3.addr])
            c3.delete("/services/web/c")
            self._wait_set([b1.addr])
        finally:
            recs = load.stop()
        failed = [r for r in recs if r[2] != 200]
        self.assertEqual(failed, [], "the keep-alive client saw failed requests")


if __name__ == "__main__":
    unittest.main()
