"""Service discovery (issue 18): runtime servers from DNS, against a real
dnsmasq that each test starts on a free loopback port with its own hosts
file and SRV records. dnsmasq re-reads --addn-hosts files on SIGHUP; its
--srv-host records come from the command line, so a test that changes them
restarts it on the same port."""
import os
import shutil
import signal
import subprocess
import time
import unittest

from lbdtest import Backend, LbdTestCase, free_port, http_get, wait_for
from lbdextra import Load, admin_metrics, admin_status, ext_config, run_requests, tally

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


class Dnsmasq:
    """dnsmasq answering for *.test from HOSTS (a file) and SRV records,
    nothing else (--local: NXDOMAIN for names it does not have)."""

    def __init__(self, tc, hosts, srv=(), ttl=1):
        self.tc = tc
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
        self.log = open(self.tc.path(f"dnsmasq-{time.monotonic_ns()}.log"), "wb")
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

    def _lbd(self, discovery, strategy="round_robin", workers=2, more=None):
        listen = f"127.0.0.1:{free_port()}"
        self.admin = f"127.0.0.1:{free_port()}"
        d = {"type": "dns", "resolvers": [self.dns.addr], "min_interval": "200ms",
             "max_interval": "1s", "timeout": "300ms"}
        d.update(discovery)
        pool = {"name": "web", "strategy": strategy, "discovery": d}
        pool.update(more or {})
        cfg = ext_config(listen, [pool], workers=workers, admin=self.admin)
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
            srv = [s for s in self._servers()["servers"] if s["address"] == b2.addr]
            self.assertEqual(len(srv), 1)
            self.assertEqual(srv[0]["runtime"], "draining")
            self.assertEqual(srv[0]["weight"], 0)
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


if __name__ == "__main__":
    unittest.main()
