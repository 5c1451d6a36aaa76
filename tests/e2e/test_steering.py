"""eBPF steering of clients to workers, and live worker scaling (README
"Steering", "Signals").

Which worker accepted a connection is read from `lbd -s` (each running
worker's accepted-connections counter, before and after). The kernel's
choice is also compared with what bpf/steer.h computes, reimplemented
here (tests/unit/test_steer.c pins the same values in C)."""
import collections
import os
import signal
import socket
import struct
import subprocess
import threading

import test_lifecycle
from lbdtest import (HttpConn, LbdTestCase, free_port, http_get, ipv6_loopback_available,
                     lbd_config, proc_children, proc_title, wait_for)

# ---- bpf/steer.h in Python ----------------------------------------------

M32 = 0xffffffff
SLOTS = 1024


def _mix(h):
    h ^= h >> 16
    h = (h * 0x85ebca6b) & M32
    h ^= h >> 13
    h = (h * 0xc2b2ae35) & M32
    h ^= h >> 16
    return h


def steer_hash(ip):
    """lb_steer_hash_addr of IP: its bytes as the kernel reads them, taken
    as native (little-endian) 32-bit words."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    raw = socket.inet_pton(fam, ip)
    words = struct.unpack("<%dI" % (len(raw) // 4), raw)
    h = 0x9e3779b9 ^ len(words)
    for w in words:
        h = (_mix(h ^ w) + 0x7f4a7c15) & M32
    return _mix(h)


def steer_ring(live):
    """lb_steer_fill: each slot to the live worker with the highest score."""
    keys = [_mix((k + 0x632be5ab) & M32) for k in range(64)]
    ring = []
    for s in range(SLOTS):
        base = (s * 0x9e3779b1) & M32
        best = max(sorted(live), key=lambda k: (_mix(base ^ keys[k]), -k))
        ring.append(best)
    return ring


def predicted(addrs, live):
    ring = steer_ring(live)
    return {a: ring[steer_hash(a) & (SLOTS - 1)] for a in addrs}


# 100 distinct client addresses in 127.0.0.0/8 (all on the loopback).
ADDRS = [f"127.{10 + i // 40}.{(i * 7) % 250 + 1}.{(i * 37) % 250 + 2}" for i in range(100)]


class SteeringBase(LbdTestCase):

    def start(self, workers=4, steering="client_ip", args=(), file_workers=None):
        (b1,) = self.start_backends("b1")
        port = free_port()
        listen = f"127.0.0.1:{port}"
        cfg = lbd_config(listen, [{"name": "web", "servers": [(b1.addr, 1)]}],
                         workers=file_workers or workers, listener={"steering": steering})
        lbd = self.start_lbd(cfg, listen, args=args, workers=workers)
        mode = lbd.snapshot()["steering"]["mode"]
        if steering == "client_ip" and mode != "client_ip":
            self.require_capability("lbd cannot load its eBPF steering program here: "
                                    + lbd.log()[-500:])
        self.assertEqual(mode, steering)
        return lbd

    @staticmethod
    def accepted(lbd):
        """{worker id: connections accepted} of the running workers."""
        return {w["id"]: w["connections"] for w in lbd.running_workers()}

    def map_clients(self, lbd, addrs, per_addr=3):
        """{address: worker id} from PER_ADDR connections of each address
        (one request each), asserting they all went to one worker."""
        out = {}
        before = self.accepted(lbd)
        for a in addrs:
            for _ in range(per_addr):
                with HttpConn(lbd.listen, source=a) as c:
                    r = c.request("/")
                    self.assertEqual(r.status, 200, r)
            after = self.accepted(lbd)
            got = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
            self.assertEqual(len(got), 1, f"the {per_addr} connections of {a} went to "
                             f"workers {got}")
            ((wid, n),) = got.items()
            self.assertEqual(n, per_addr, f"{a}: {got}")
            out[a] = wid
            before = after
        return out

    def scale(self, lbd, n, expect_ok=True):
        r = subprocess.run([self.lbd_bin, "-S", str(n), "-c", lbd.config_path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=15)
        if expect_ok:
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(b"lbd: ok", r.stdout)
        else:
            self.assertNotEqual(r.returncode, 0, r.stdout)
        return r

    def wait_workers(self, lbd, n):
        """N workers running and none draining (the scaling is done)."""
        def settled():
            ws = lbd.snapshot()["workers"]
            running = sorted(w["id"] for w in ws if w["state"] == "running")
            return running == list(range(n)) and len(ws) == n
        wait_for(settled, 30, what=f"{n} running workers and no other")


class SteeringTest(SteeringBase):

    def test_clients_keep_their_worker_and_spread(self):
        """100 client addresses, 3 connections each, 4 workers: each
        address's connections land on one worker, the one bpf/steer.h
        predicts; every worker gets clients, none more than twice the mean."""
        lbd = self.start(workers=4)
        got = self.map_clients(lbd, ADDRS)
        self.assertEqual(got, predicted(ADDRS, range(4)))
        per = collections.Counter(got.values())
        self.assertEqual(sorted(per), [0, 1, 2, 3], per)
        self.assertLessEqual(max(per.values()), 2 * len(ADDRS) // 4, per)
        # What lbd -s says about it.
        st = lbd.snapshot()["steering"]
        self.assertEqual(st["client_ip_listeners"], 1)
        self.assertFalse(st["bpf_unavailable"])

    def test_ipv6_client(self):
        """An IPv6 client ([::1]) keeps its worker too (its 16 address bytes
        hashed as bpf/steer.h says)."""
        if not ipv6_loopback_available():
            self.skipTest("no IPv6 loopback")
        (b1,) = self.start_backends("b1")
        port = free_port()
        listen = f"[::1]:{port}"
        cfg = lbd_config(listen, [{"name": "web", "servers": [(b1.addr, 1)]}], workers=4,
                         listener={"steering": "client_ip"})
        lbd = self.start_lbd(cfg, listen, workers=4)
        if lbd.snapshot()["steering"]["mode"] != "client_ip":
            self.require_capability("lbd cannot load its eBPF steering program here")
        self.assertEqual(self.map_clients(lbd, ["::1"], per_addr=8),
                         predicted(["::1"], range(4)))

    def test_reload_keeps_clients_and_switches_mode(self):
        """A reload keeps the program on the sockets it takes over: every
        client keeps its worker. A reload to steering = "kernel" detaches
        it (one client spreads again), and one back attaches it again."""
        lbd = self.start(workers=3)
        addrs = ADDRS[:30]
        first = self.map_clients(lbd, addrs, per_addr=2)
        cfg = open(lbd.config_path).read()
        lbd.reload(cfg)
        self.wait_workers(lbd, 3)
        self.assertEqual(self.map_clients(lbd, addrs, per_addr=2), first)
        lbd.reload(cfg.replace('steering = "client_ip"', 'steering = "kernel"'))
        self.wait_workers(lbd, 3)
        self.assertEqual(lbd.snapshot()["steering"]["mode"], "kernel")
        before = self.accepted(lbd)
        for _ in range(30):
            with HttpConn(lbd.listen, source=addrs[0]) as c:
                self.assertEqual(c.request("/").status, 200)
        after = self.accepted(lbd)
        self.assertGreater(sum(1 for k in after if after[k] > before[k]), 1)
        lbd.reload(cfg)
        self.wait_workers(lbd, 3)
        self.assertEqual(lbd.snapshot()["steering"]["mode"], "client_ip")
        self.assertEqual(self.map_clients(lbd, addrs, per_addr=2), first)

    def test_kernel_steering_spreads_one_client(self):
        """steering = "kernel": one client's connections spread over the
        workers (the kernel's 4-tuple hash), as before the program."""
        lbd = self.start(workers=4, steering="kernel")
        before = self.accepted(lbd)
        for _ in range(40):
            with HttpConn(lbd.listen, source=ADDRS[0]) as c:
                self.assertEqual(c.request("/").status, 200)
        after = self.accepted(lbd)
        self.assertGreater(sum(1 for k in after if after[k] > before[k]), 1)
        self.assertEqual(lbd.snapshot()["steering"]["client_ip_listeners"], 0)

    def test_dead_worker_clients_move_and_return(self):
        """Worker V is killed at each start until its respawn waits 10 s.
        Meanwhile its clients go to the other workers, and every other
        client keeps its worker; once V is back, its clients return."""
        self.expect_worker_deaths()
        lbd = self.start(workers=4)
        first = self.map_clients(lbd, ADDRS, per_addr=1)
        victim = collections.Counter(first.values()).most_common(1)[0][0]
        at = test_lifecycle.CrashLoopTest.crash_loop(self, lbd, victim, 10000)
        down = self.map_clients(lbd, ADDRS, per_addr=1)
        self.assertNotIn(f"worker {victim} started", lbd.log_since(at),
                         "the victim came back before the clients were counted")
        moved = [a for a in ADDRS if first[a] == victim]
        kept = [a for a in ADDRS if first[a] != victim and down[a] == first[a]]
        self.assertTrue(moved)
        self.assertTrue(all(down[a] != victim for a in moved), down)
        self.assertGreaterEqual(len(kept), 0.9 * (len(ADDRS) - len(moved)))
        self.assertEqual(down, predicted(ADDRS, set(range(4)) - {victim}))
        # Back: every client where it was.
        lbd.wait_log(rf"worker {victim} started", at, timeout=20)
        self.wait_workers(lbd, 4)
        self.assertEqual(self.map_clients(lbd, ADDRS, per_addr=1), first)

    def test_scale_down_hands_queued_connections_over(self):
        """With the program attached, lbd leaves net.ipv4.tcp_migrate_req
        alone (set to 0 here), and a scale-down still moves the connections queued on a
        closing socket to a live worker: worker 2 is stopped while clients
        it is steered to connect, then lbd -S 1 closes its socket (the
        worker is killed: its copy closes too)."""
        self.expect_worker_deaths()
        sysctl = "/proc/sys/net/ipv4/tcp_migrate_req"
        try:
            with open(sysctl) as f:
                was = f.read().strip()
            with open(sysctl, "w") as f:
                f.write("0\n")
        except OSError:
            self.skipTest("cannot set net.ipv4.tcp_migrate_req to 0 for the test")

        def restore():
            with open(sysctl, "w") as f:
                f.write(was + "\n")
        self.addCleanup(restore)
        lbd = self.start(workers=3)
        if not lbd.snapshot()["steering"]["migrate"]:
            self.require_capability("the kernel has no sk_reuseport/migrate (Linux 5.14)")
        to2 = [a for a, w in predicted(ADDRS, range(3)).items() if w == 2][:10]
        self.assertGreaterEqual(len(to2), 5)
        (victim,) = [w["pid"] for w in lbd.running_workers() if w["id"] == 2]
        os.kill(victim, signal.SIGSTOP)
        conns = []
        killed = False
        try:
            for a in to2 * 3:
                c = HttpConn(lbd.listen, timeout=10, source=a)
                conns.append(c)
                c.send(b"GET / HTTP/1.1\r\nHost: lbd.test\r\nConnection: close\r\n\r\n")
            self.scale(lbd, 1)
            os.kill(victim, signal.SIGKILL)
            killed = True
            for i, c in enumerate(conns):
                try:
                    r = c.read_response()
                except Exception as e:  # noqa: BLE001
                    self.fail(f"connection {i} of {len(conns)} was lost when its socket "
                              f"closed: {e!r}")
                self.assertEqual(r.status, 200, r)
        finally:
            if not killed:
                os.kill(victim, signal.SIGKILL)
            for c in conns:
                c.close()
        # (Other lbds on this host may turn the sysctl on meanwhile: the log
        # says what this one did. With a migrate program attached the kernel
        # asks the program, whatever the sysctl says.)
        self.assertNotIn("tcp_migrate_req", lbd.log())
        self.assertEqual(lbd.snapshot()["totals"]["requests"], len(conns))


class BpfUnavailableTest(SteeringBase):
    """lbd without the capabilities to load BPF (CAP_BPF and CAP_SYS_ADMIN
    dropped from its bounding set by setpriv)."""

    def wrapper(self, require):
        if os.geteuid() != 0:
            self.skipTest("needs root (to drop capabilities)")
        setpriv = "/usr/bin/setpriv"
        if not os.access(setpriv, os.X_OK):
            self.skipTest("no setpriv (util-linux)")
        path = self.path("lbd-nobpf")
        env = "LBD_REQUIRE_BPF=1" if require else "-u LBD_REQUIRE_BPF"
        self.write_file(path, f"#!/bin/sh\nexec env {env} {setpriv} "
                              f"--bounding-set=-bpf,-sys_admin {self.lbd_bin} \"$@\"\n")
        os.chmod(path, 0o755)
        return path

    def config(self, backend):
        listens = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        return listens, lbd_config(listens, [{"name": "web", "servers": [(backend.addr, 1)]}],
                                   workers=2, listener={"steering": "client_ip"})

    def test_falls_back_to_kernel_with_one_warning(self):
        (b1,) = self.start_backends("b1")
        self.lbd_bin = self.wrapper(require=False)
        listens, cfg = self.config(b1)
        lbd = self.start_lbd(cfg, listens[0], workers=2)
        st = lbd.snapshot()["steering"]
        self.assertEqual((st["mode"], st["bpf_unavailable"]), ("kernel", True))
        self.assertEqual(lbd.log().count("cannot load the eBPF steering program"), 1, lbd.log())
        self.assertServes(lbd)

    def test_refuses_to_start_with_lbd_require_bpf(self):
        (b1,) = self.start_backends("b1")
        self.lbd_bin = self.wrapper(require=True)
        listens, cfg = self.config(b1)
        path = self.write_file(self.path("lbd.conf"), cfg)
        r = subprocess.run([self.lbd_bin, "-c", path], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"LBD_REQUIRE_BPF=1", r.stdout)


class ScalingTest(SteeringBase):

    def scale_under_load(self, steering):
        """TTIN, TTOU and lbd -S up and down while keep-alive clients
        (HTTP/1.1, HTTP/1.0 keep-alive) and new-connection clients from
        eight addresses send requests: none fails."""
        lbd = self.start(workers=2, steering=steering)
        loads = [test_lifecycle.LoadLoop(lbd.listen, nthreads=4, max_seconds=120,
                                         sources=ADDRS[0:4]),
                 test_lifecycle.LoadLoop(lbd.listen, nthreads=2, http10=True, max_seconds=120,
                                         sources=ADDRS[4:6]),
                 test_lifecycle.LoadLoop(lbd.listen, nthreads=2, new_conn=True, max_seconds=120,
                                         sources=ADDRS[6:8])]
        steps = [("TTIN", 3), ("TTIN", 4), ("TTOU", 3), ("S", 1), ("S", 4), ("TTOU", 3),
                 ("S", 2)]
        try:
            for ld in loads:
                ld.wait_count(20)
            for kind, n in steps:
                if kind == "S":
                    self.scale(lbd, n)
                else:
                    lbd.signal(getattr(signal, "SIG" + kind))
                self.wait_workers(lbd, n)
                for ld in loads:
                    ld.wait_count(ld.count() + 20)
        finally:
            for ld in loads:
                ld.stop()
        for name, ld in zip(("HTTP/1.1 keep-alive", "HTTP/1.0 keep-alive", "new connection"),
                            loads):
            self.assertEqual(ld.errors, [], f"{name}: {len(ld.errors)} of "
                             f"{ld.ok + len(ld.errors)} requests failed while scaling")
        for ld in loads[:2]:
            self.assertGreater(ld.ok, 3 * ld.connections, (ld.ok, ld.connections))
        snap = lbd.snapshot()
        self.assertEqual((snap["workers_configured"], snap["workers_scaled"]), (2, 2))
        self.assertEqual(lbd.log().count("scaled from"), len(steps))

    def test_scale_under_load_client_ip(self):
        self.scale_under_load("client_ip")

    def test_scale_under_load_kernel(self):
        self.scale_under_load("kernel")

    def test_scale_limits_and_reload(self):
        """-S takes 1..64; TTOU never goes below one worker; the scaled
        count beats the file and -w, across reloads, until the next start."""
        lbd = self.start(workers=2, steering="kernel", args=["-w", "2"], file_workers=4)
        self.scale(lbd, 0, expect_ok=False)
        self.scale(lbd, 65, expect_ok=False)
        self.scale(lbd, 1)
        self.wait_workers(lbd, 1)
        at = lbd.log_size()
        lbd.signal(signal.SIGTTOU)
        lbd.wait_log("TTOU: already at one worker", at)
        self.wait_workers(lbd, 1)
        self.assertServes(lbd)
        self.scale(lbd, 3)
        self.wait_workers(lbd, 3)
        lbd.reload()
        self.wait_workers(lbd, 3)
        snap = lbd.snapshot()
        self.assertEqual((snap["workers_configured"], snap["workers_scaled"]), (3, 3))
        self.assertServes(lbd)


def control_socket_name(config_path):
    """shared/instance.c's abstract socket name for CONFIG_PATH: "lbd-" and
    the FNV-1a 64 hash of the file's real path, in hex."""
    h = 14695981039346656037
    for b in os.path.realpath(config_path).encode():
        h = ((h ^ b) * 1099511628211) & 0xffffffffffffffff
    return b"\0lbd-%016x" % h


class ControlSocketTest(SteeringBase):
    """The master's abstract control socket (lbd -s, lbtop, lbd -S):
    anyone on the host may connect to it."""

    def connect(self, lbd):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking: a unix socket's connect waits for room in the backlog
        # then (with a timeout it fails at once).
        s.connect(control_socket_name(lbd.config_path))
        s.settimeout(20)
        return s

    def test_silent_clients_do_not_stall_the_master(self):
        """Clients that connect and say nothing, one after the other (up
        to 300, all kept open): the master still reloads on HUP and answers
        lbd -S meanwhile; each silent client gets the memfd in the end, as
        an old client that sends no request does."""
        lbd = self.start(workers=2, steering="kernel")
        stop = threading.Event()
        held, served = [], []

        def flood():
            for _ in range(300):
                if stop.is_set():
                    return
                try:
                    held.append(self.connect(lbd))
                except OSError:
                    return
        t = threading.Thread(target=flood, daemon=True)
        t.start()
        try:
            wait_for(lambda: len(held) >= 40 or not t.is_alive(), 30,
                     what="40 silent clients connected")
            at = lbd.log_size()
            lbd.signal(signal.SIGHUP)
            lbd.wait_log("configuration reloaded", at, timeout=30)
            self.scale(lbd, 3)
            self.wait_workers(lbd, 3)
        finally:
            stop.set()
            t.join(30)
            for s in held:
                try:
                    msg, anc, _, _ = s.recvmsg(1, socket.CMSG_SPACE(4))
                    served.append(msg)
                    for level, kind, data in anc:
                        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                            os.close(struct.unpack("i", data[:4])[0])
                except OSError:
                    pass
                s.close()
        self.assertEqual(served, [b"L"] * len(held), "every silent client got the memfd")
        self.assertServes(lbd)

    def test_garbage_requests(self):
        """Malformed requests, a large one, and a client that closes at
        once: each gets an error line (or the memfd), the master carries
        on with its workers; scaling is refused to a user other than root
        and lbd's."""
        lbd = self.start(workers=2, steering="kernel")
        for req in (b"S", b"Sx", b"S-1", b"S99999999999999999999", b"S 0", b"S65",
                    b"\xff" * 31, b"S" * 4096, b"Q2"):
            s = self.connect(lbd)
            s.sendall(req)
            s.shutdown(socket.SHUT_WR)
            msg, anc, _, _ = s.recvmsg(256, socket.CMSG_SPACE(4))
            for level, kind, data in anc:
                os.close(struct.unpack("i", data[:4])[0])
            s.close()
            if req.startswith(b"S"):
                self.assertTrue(msg.startswith(b"error "), (req[:20], msg))
            else:
                self.assertEqual(msg, b"L", req[:20])
        s = self.connect(lbd)
        s.close()
        code = ("import socket; s = socket.socket(socket.AF_UNIX); "
                f"s.connect({control_socket_name(lbd.config_path)!r}); s.sendall(b'S3'); "
                "print(s.recv(256).decode())")
        r = subprocess.run(["python3", "-c", code], user=65534, capture_output=True,
                           text=True, timeout=30)
        self.assertIn("error refused", r.stdout, r.stderr)
        snap = lbd.snapshot()
        self.assertEqual((snap["workers_configured"], snap["workers_scaled"]), (2, 0))
        self.assertEqual(len(lbd.running_workers()), 2)
        self.assertServes(lbd)

    def test_scaling_client_is_not_inherited_by_new_workers(self):
        """The connection of lbd -S stays in no worker the scaling forks:
        the client reads its answer to the end (the master's close), and a
        worker started by the scaling holds as many fds as one started by
        lbd."""
        lbd = self.start(workers=2, steering="kernel")
        s = self.connect(lbd)
        s.sendall(b"S3")
        got = b""
        while True:
            try:
                x = s.recv(256)
            except socket.timeout:
                self.fail(f"no end to the answer after {got!r}: a worker holds the connection")
            if not x:
                break
            got += x
        s.close()
        self.assertTrue(got.startswith(b"ok 3 worker(s)"), got)
        self.wait_workers(lbd, 3)
        fds = {}
        for w in lbd.running_workers():
            fds[w["id"]] = len(os.listdir(f"/proc/{w['pid']}/fd"))
        self.assertEqual(fds[2], fds[0], fds)

    def test_other_users_get_a_read_only_segment(self):
        """The memfd the socket hands to anyone (lbd -s, lbtop) lets
        another user read the segment, not write it: no shared writable
        mapping, no reopening it for writing through /proc (the admin API's
        token would mean nothing if any local user could set a server's
        state in shm)."""
        lbd = self.start(workers=2, steering="kernel")
        code = f"""
import mmap, os, socket, struct
s = socket.socket(socket.AF_UNIX)
s.connect({control_socket_name(lbd.config_path)!r})
s.sendall(b"G")
msg, anc, _, _ = s.recvmsg(1, socket.CMSG_SPACE(4))
fd = struct.unpack("i", anc[0][2][:4])[0]
ro = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ)
print("magic", ro[:7].decode())
for what, f in (("mmap", lambda: mmap.mmap(fd, 4096, mmap.MAP_SHARED,
                                         mmap.PROT_READ | mmap.PROT_WRITE)),
                ("reopen", lambda: os.open(f"/proc/self/fd/{{fd}}", os.O_RDWR))):
    try:
        f()
        print(what, "writable")
    except OSError as e:
        print(what, "refused")
"""
        r = subprocess.run(["python3", "-c", code], user=65534, capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.stdout.split("\n"), ["magic LBDSHM1", "mmap refused", "reopen refused",
                                                ""], r.stderr)

    def test_ttin_to_the_whole_group_stops_no_process(self):
        """TTIN and TTOU sent to every process of lbd, as `systemctl kill`
        does without --kill-whom=main: the master scales, and the workers
        and the control process, for which the signals' default is to stop
        the process, go on: every request on a new connection succeeds
        and no process is stopped."""
        lbd = self.start(workers=2, steering="kernel")
        kids = proc_children(lbd.pid)
        self.assertEqual(len(kids), 3)
        for sig in (signal.SIGTTIN, signal.SIGTTOU):
            at = lbd.log_size()
            for pid in [lbd.pid] + kids:
                os.kill(pid, sig)
            lbd.wait_log("scaled from", at)
        self.wait_workers(lbd, 2)
        failed = 0
        for _ in range(8):
            try:
                r = http_get(lbd.listen, timeout=3)
                failed += r.status != 200
            except OSError:
                failed += 1
        self.assertEqual(failed, 0, "requests failed: a stopped worker took them")
        for pid in kids:
            with open(f"/proc/{pid}/stat") as f:
                self.assertNotEqual(f.read().rsplit(")", 1)[1].split()[0], "T", proc_title(pid))
