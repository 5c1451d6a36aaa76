"""Binary upgrade (USR2): the master re-executes the file now at its path
in place (same pid), passing the listening sockets and the shared memory;
its new workers take over and the old ones drain. Two builds that differ:
build/lbd and build/lbd-b (the same tree with version 0.2.0+b)."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import unittest

import lbdtest
from lbdtest import (LbdTestCase, free_port, http_get, lbd_config, pid_alive, proc_children,
                     proc_title, wait_for)
from test_lifecycle import LoadLoop


# The DOWN server is third of three: the control process, restarted by every
# reload and upgrade, would probe it 40 s after its start (a 60 s interval
# spread over three servers); the first one it probes at once.
SLOW_CHECK = {"path": "/healthz", "interval": "60s", "timeout": "1s", "rise": 1, "fall": 1}
FAST_CHECK = dict(SLOW_CHECK, interval="300ms")


def exe_id(path):
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def version_of(binary):
    return "0.2.0+b" if os.path.basename(binary) == "lbd-b" else "0.2.0"


def master_fds(pid):
    """{fd: what it points to} of process PID."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return out


class UpgradeTest(LbdTestCase):

    def setUp(self):
        super().setUp()
        for b in (lbdtest.LBD_B, lbdtest.LBD_CRASH, lbdtest.LBD_LAYOUT):
            if not os.access(b, os.X_OK):
                self.fail(f"{b} is not an executable: run `make` first")
        self.sbin = self.path("sbin")
        os.mkdir(self.sbin)
        self.binary = os.path.join(self.sbin, "lbd")
        self.install(self.lbd_bin)

    def install(self, src):
        """Put SRC at the path lbd runs from, as a package manager does: a
        new file renamed over the old one (the running one lives on)."""
        tmp = self.binary + ".new"
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(src, str) and os.path.exists(src):
            shutil.copy(src, tmp)
        else:
            with open(tmp, "w") as f:
                f.write(src)
        os.chmod(tmp, 0o755)
        os.replace(tmp, self.binary)

    def start(self, config_text, listen, workers=2):
        """lbd started from self.binary (lbd -s still runs the build's file:
        both builds read the same layout)."""
        self.pid_file = self.path("lbd.pid")
        saved, self.lbd_bin = self.lbd_bin, self.binary
        try:
            return self.start_lbd(config_text, listen, args=("-p", self.pid_file),
                                  workers=workers)
        finally:
            self.lbd_bin = saved

    def config(self, listen, servers, check=SLOW_CHECK, workers=2):
        return lbd_config(listen, [{"name": "web", "servers": servers, "health_check": check}],
                          workers=workers)

    def pid_file_pid(self):
        with open(self.pid_file) as f:
            return int(f.read())

    def upgrade(self, lbd, expect_ok=True):
        """USR2 and wait for its outcome in lbd -s: upgrades or
        upgrade_failures goes up by one."""
        before = lbd.snapshot()
        lbd.signal(signal.SIGUSR2)

        def done():
            s = lbd.snapshot()
            if s["upgrades"] > before["upgrades"]:
                return ("ok", s)
            if s["upgrade_failures"] > before["upgrade_failures"]:
                return ("failed", s)
            return None
        outcome, snap = wait_for(done, 30, what="the upgrade's outcome")
        if expect_ok and outcome != "ok":
            raise AssertionError(f"upgrade failed; log:\n{lbd.log()[-3000:]}")
        if not expect_ok and outcome != "failed":
            raise AssertionError("upgrade succeeded where it should fail")
        self.assertEqual(snap["upgrades"] + snap["upgrade_failures"],
                         before["upgrades"] + before["upgrade_failures"] + 1, snap)
        return before, snap

    @staticmethod
    def workers_of(lbd):
        """Pids of lbd's workers, old and new."""
        out = []
        for pid in proc_children(lbd.pid):
            if (proc_title(pid) or "").startswith("lbd: worker"):
                lbd.seen_workers.add(pid)
                out.append(pid)
        return out

    def children_exe(self, lbd):
        """{pid: (dev, inode) of its executable} of every worker of lbd."""
        out = {}
        for w in self.workers_of(lbd):
            try:
                out[w] = exe_id(f"/proc/{w}/exe")
            except OSError:
                pass        # exited meanwhile
        return out

    def wait_all_workers_run(self, lbd, binary_id):
        def only_new():
            exes = self.children_exe(lbd)
            return exes and all(e == binary_id for e in exes.values())
        wait_for(only_new, 30, what="every worker to run the new binary (old ones drained)")
        self.assertEqual(exe_id(f"/proc/{lbd.pid}/exe"), binary_id, "the master runs it too")

    def test_upgrades_and_reloads_under_load_lose_no_request(self):
        """Five upgrades alternating between two builds (and between 1, 2
        and 3 workers), with four reloads after each (twenty), while
        keep-alive clients and clients opening a
        connection per request run: no request fails; after each upgrade
        the master keeps its pid (and the pid file says it), lbd -s shows
        the new version and the upgrade count, every worker runs the new
        file, no total goes backwards; a server DOWN before each upgrade is
        DOWN right after it, with no new probe at that server."""
        b1, b2, down = self.start_backends("b1", "b2", "down")
        down.control("status=500")      # every request but /stats and /control fails
        listen = f"127.0.0.1:{free_port()}"
        servers = [(b1.addr, 1), (b2.addr, 1), (down.addr, 1)]
        lbd = self.start(self.config(listen, servers, check=FAST_CHECK), listen)

        def health():
            srv = {s["address"]: s for p in lbd.snapshot()["pools"] for s in p["servers"]}
            return srv[down.addr]["health"]
        wait_for(lambda: health() == "down", 15, what="the failing server to go DOWN")
        # From now on checks are far apart: no probe reaches `down` again.
        lbd.reload(self.config(listen, servers))
        probes = down.stats()["requests"]

        master = lbd.pid
        loads = [LoadLoop(lbd.listen, nthreads=4, max_seconds=240),
                 LoadLoop(lbd.listen, nthreads=2, new_conn=True, max_seconds=240)]
        totals = lbd.snapshot()["totals"]
        try:
            for ld in loads:
                ld.wait_count(20)
            for i in range(5):
                new = lbdtest.LBD_B if i % 2 == 0 else self.lbd_bin
                self.install(new)
                # An upgrade rereads the file too: the worker count changes.
                workers = (3, 1, 2, 3, 2)[i]
                self.write_file(lbd.config_path, self.config(listen, servers, workers=workers))
                _, snap = self.upgrade(lbd)
                self.assertEqual(snap["version"], version_of(new))
                self.assertEqual(snap["upgrades"], i + 1)
                self.assertEqual(snap["master_pid"], master)
                self.assertEqual(self.pid_file_pid(), master)
                self.assertTrue(lbd.alive())
                srv = {s["address"]: s for p in snap["pools"] for s in p["servers"]}
                self.assertEqual(srv[down.addr]["health"], "down", f"after upgrade {i + 1}")
                self.wait_all_workers_run(lbd, exe_id(self.binary))
                self.assertEqual(len(self.workers_of(lbd)), workers)
                for ld in loads:
                    ld.wait_count(ld.count() + 10)
                for _ in range(4):
                    lbd.reload()
                    for ld in loads:
                        ld.wait_count(ld.count() + 5)
                now = lbd.snapshot()["totals"]
                for k in ("connections", "requests", "bytes_in", "bytes_out"):
                    self.assertGreaterEqual(now[k], totals[k], f"totals.{k} went backwards")
                totals = now
        finally:
            for ld in loads:
                ld.stop()
        for name, ld in zip(("keep-alive", "new connection"), loads):
            self.assertEqual(ld.errors, [], f"{name}: {len(ld.errors)} of "
                             f"{ld.ok + len(ld.errors)} requests failed across 5 upgrades "
                             f"and 20 reloads")
        self.assertGreater(loads[0].ok, 3 * loads[0].connections)     # really kept alive
        snap = lbd.snapshot()
        self.assertEqual((snap["upgrades"], snap["upgrade_failures"], snap["reloads"]), (5, 0, 21))
        # The requests counted before the first upgrade are still counted.
        self.assertGreaterEqual(snap["totals"]["requests"], sum(ld.ok for ld in loads))
        srv = {s["address"]: s for p in snap["pools"] for s in p["servers"]}
        self.assertEqual(srv[down.addr]["health"], "down")
        # Only our /stats calls reached it since: no probe, no request.
        self.assertEqual(down.stats()["requests"], probes + 1)

    def test_upgrade_keeps_steering_and_a_live_scaling(self):
        """With the eBPF steering on (client_ip) and the worker count set
        by lbd -S, two upgrades under keep-alive and new-connection load:
        no request fails, the steering is still attached after each (the
        new image loads its own program over the inherited groups) and the
        scaled count holds (3, not the file's 2), as across a reload."""
        b1, b2 = self.start_backends("b1", "b2")
        listen = f"127.0.0.1:{free_port()}"
        cfg = lbd_config(listen, [{"name": "web", "servers": [(b1.addr, 1), (b2.addr, 1)]}],
                         workers=2, listener={"steering": "client_ip"})
        lbd = self.start(cfg, listen)
        if lbd.snapshot()["steering"]["mode"] != "client_ip":
            self.require_capability("lbd cannot load its eBPF steering program here")
        out = subprocess.run([self.lbd_bin, "-S", "3", "-c", lbd.config_path],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        wait_for(lambda: len(self.workers_of(lbd)) == 3, 30, what="three workers")
        loads = [LoadLoop(lbd.listen, nthreads=2, max_seconds=120),
                 LoadLoop(lbd.listen, nthreads=2, new_conn=True, max_seconds=120)]
        try:
            for ld in loads:
                ld.wait_count(20)
            for i in range(2):
                new = lbdtest.LBD_B if i % 2 == 0 else self.lbd_bin
                self.install(new)
                _, snap = self.upgrade(lbd)
                self.assertEqual(snap["steering"]["mode"], "client_ip")
                self.wait_all_workers_run(lbd, exe_id(self.binary))
                self.assertEqual(len(self.workers_of(lbd)), 3, "the scaled count holds")
                self.assertEqual(lbd.snapshot()["workers_scaled"], 3)
                for ld in loads:
                    ld.wait_count(ld.count() + 20)
        finally:
            for ld in loads:
                ld.stop()
        for name, ld in zip(("keep-alive", "new connection"), loads):
            self.assertEqual(ld.errors, [], f"{name}: {len(ld.errors)} of "
                             f"{ld.ok + len(ld.errors)} requests failed across 2 upgrades")

    def test_failed_upgrades_keep_the_old_one_serving(self):
        """A missing file, a configuration the new binary refuses, a file
        that is no lbd (a script that exits at once) and a new listener on
        a port another process holds: each upgrade is refused with a log
        line saying why, under load no request fails, the same workers
        serve on, the pid file names the master; then a good upgrade
        works."""
        b1, = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        servers = [(b1.addr, 1)]
        cfg = self.config(listen, servers, check=None)
        lbd = self.start(cfg, listen)
        master = lbd.pid
        workers = sorted(self.workers_of(lbd))
        running = exe_id(f"/proc/{master}/exe")
        loads = [LoadLoop(lbd.listen, nthreads=3, max_seconds=120),
                 LoadLoop(lbd.listen, nthreads=2, new_conn=True, max_seconds=120)]
        try:
            for ld in loads:
                ld.wait_count(20)
            cases = []

            def missing():
                os.unlink(self.binary)
            cases.append((missing, r"upgrade refused.*No such file"))

            def bad_config():
                self.install(lbdtest.LBD_B)
                self.write_file(lbd.config_path, cfg + "bogus\n")
            cases.append((bad_config, r"upgrade refused.*lbd\.conf:\d+"))

            def script():
                self.write_file(lbd.config_path, cfg)
                self.install("#!/bin/sh\nexit 0\n")
            cases.append((script, r"upgrade refused.*not an lbd"))

            def busy_port():
                self.install(lbdtest.LBD_B)
                self.write_file(lbd.config_path,
                                self.config([listen, b1.addr], servers, check=None))
            cases.append((busy_port, r"upgrade refused.*cannot listen on " + b1.addr))

            for n, (prepare, why) in enumerate(cases, 1):
                prepare()
                off = lbd.log_size()
                _, snap = self.upgrade(lbd, expect_ok=False)
                lbd.wait_log(why, since=off)
                self.assertEqual((snap["upgrades"], snap["upgrade_failures"]), (0, n))
                self.assertEqual(snap["version"], "0.2.0")
                self.assertEqual(self.pid_file_pid(), master)
                self.assertEqual(sorted(w["pid"] for w in lbd.running_workers(snap)), workers)
                self.assertEqual(exe_id(f"/proc/{master}/exe"), running)
                for ld in loads:
                    ld.wait_count(ld.count() + 10)
            self.assertEqual(sorted(self.workers_of(lbd)), workers, "no worker was replaced")

            self.write_file(lbd.config_path, cfg)
            _, snap = self.upgrade(lbd)
            self.assertEqual((snap["version"], snap["upgrades"]), ("0.2.0+b", 1))
            self.wait_all_workers_run(lbd, exe_id(self.binary))
            for ld in loads:
                ld.wait_count(ld.count() + 10)
        finally:
            for ld in loads:
                ld.stop()
        for name, ld in zip(("keep-alive", "new connection"), loads):
            self.assertEqual(ld.errors, [], f"{name}: {len(ld.errors)} of "
                             f"{ld.ok + len(ld.errors)} requests failed")
        self.assertEqual(self.pid_file_pid(), master)

    def test_new_workers_dying_at_start_bring_the_old_binary_back(self):
        """A binary that passes the check but whose workers die as they
        start: the old workers serve on meanwhile (no request fails), the
        master goes back to the old binary by itself (same pid), counts a
        failure, and its workers run the old file; the next USR2 runs the
        file at the path again."""
        self.expect_worker_deaths()
        b1, = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        lbd = self.start(self.config(listen, [(b1.addr, 1)], check=None), listen)
        master = lbd.pid
        old = exe_id(f"/proc/{master}/exe")
        loads = [LoadLoop(lbd.listen, nthreads=3, max_seconds=120),
                 LoadLoop(lbd.listen, nthreads=2, new_conn=True, max_seconds=120)]
        try:
            for ld in loads:
                ld.wait_count(20)
            self.install(lbdtest.LBD_CRASH)
            off = lbd.log_size()
            _, snap = self.upgrade(lbd, expect_ok=False)
            lbd.wait_log(r"a new worker died .*going back to the previous binary", since=off)
            lbd.wait_log(r"upgrade rolled back: lbd 0\.2\.0 ", since=off)
            self.assertEqual((snap["version"], snap["upgrades"], snap["upgrade_failures"]),
                             ("0.2.0", 0, 1))
            self.assertEqual((snap["master_pid"], self.pid_file_pid()), (master, master))
            self.assertEqual(exe_id(f"/proc/{master}/exe"), old)
            self.wait_all_workers_run(lbd, old)
            for ld in loads:
                ld.wait_count(ld.count() + 10)
            self.install(lbdtest.LBD_B)
            _, snap = self.upgrade(lbd)
            self.assertEqual((snap["version"], snap["upgrades"]), ("0.2.0+b", 1))
            self.wait_all_workers_run(lbd, exe_id(self.binary))
            for ld in loads:
                ld.wait_count(ld.count() + 10)
        finally:
            for ld in loads:
                ld.stop()
        for name, ld in zip(("keep-alive", "new connection"), loads):
            self.assertEqual(ld.errors, [], f"{name}: {len(ld.errors)} of "
                             f"{ld.ok + len(ld.errors)} requests failed")

    def snapshot_with(self, lbd, binary):
        """lbd -s run by BINARY (it reads its own layout only); None if it
        cannot read the running segment (yet)."""
        p = subprocess.run([binary, "-s", "-c", lbd.config_path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=15)
        return json.loads(p.stdout) if p.returncode == 0 else None

    def test_upgrade_across_a_layout_change_starts_fresh(self):
        """To a binary of another shm layout and back: each time the new
        image cannot adopt the segment, says so, and starts a fresh one
        (its own start time, counters from zero but the upgrade counts,
        which come over with the hand-over); the old workers, which write
        the old segment, drain and are reaped; no request fails."""
        b1, = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        lbd = self.start(self.config(listen, [(b1.addr, 1)], check=None), listen)
        master = lbd.pid
        lbd.reload()
        lbd.reload()
        loads = [LoadLoop(lbd.listen, nthreads=3, max_seconds=120),
                 LoadLoop(lbd.listen, nthreads=2, new_conn=True, max_seconds=120)]
        try:
            for ld in loads:
                ld.wait_count(20)
            for n, (new, reader, version) in enumerate(
                    ((lbdtest.LBD_LAYOUT, lbdtest.LBD_LAYOUT, "0.2.0+layout"),
                     (self.lbd_bin, self.lbd_bin, "0.2.0")), 1):
                before = self.snapshot_with(lbd, self.lbd_bin if n == 1 else lbdtest.LBD_LAYOUT)
                self.assertIsNotNone(before)
                self.install(new)
                off = lbd.log_size()
                lbd.signal(signal.SIGUSR2)
                lbd.wait_log(r"upgrade: .* shm layout \d+ \(not adoptable: its state starts "
                             r"afresh\): executing it", since=off, timeout=30)
                lbd.wait_log(r"shared memory cannot be adopted \(segment layout version differs "
                             r"from this binary's\): starting fresh", since=off, timeout=30)
                snap = wait_for(lambda: (lambda s: s if s and s["upgrades"] == n else None)(
                    self.snapshot_with(lbd, reader)), 30, what="the upgrade to settle")
                self.assertEqual((snap["version"], snap["master_pid"], snap["upgrade_failures"]),
                                 (version, master, 0))
                self.assertNotEqual(snap["layout_version"], before["layout_version"])
                self.assertGreater(snap["started_ms"], before["started_ms"])   # a new segment
                self.assertEqual(snap["reloads"], 0)
                self.assertEqual(self.pid_file_pid(), master)
                self.wait_all_workers_run(lbd, exe_id(self.binary))
                for ld in loads:
                    ld.wait_count(ld.count() + 10)
        finally:
            for ld in loads:
                ld.stop()
        for name, ld in zip(("keep-alive", "new connection"), loads):
            self.assertEqual(ld.errors, [], f"{name}: {len(ld.errors)} of "
                             f"{ld.ok + len(ld.errors)} requests failed")

    def test_lbtop_follows_an_upgrade_across_a_layout_change(self):
        """One lbtop (of this build's layout) in batch mode across an
        upgrade to a binary of another layout and back: the master's pid
        stays, but the segment lbtop reads is replaced. lbtop says it
        cannot read the new one (instead of showing the old segment, frozen
        once its workers are gone), then re-attaches to the segment of the
        upgrade back and counts its requests."""
        from test_lbtop import frames, parse_frame
        b1, = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        lbd = self.start(self.config(listen, [(b1.addr, 1)], check=None), listen)
        out_path = self.path("lbtop.out")
        with open(out_path, "wb") as out:
            top = subprocess.Popen([self.lbtop_bin, "-c", lbd.config_path, "-b", "-n", "3000",
                                    "-d", "0.05"], stdout=out, stderr=subprocess.STDOUT)
        self.addCleanup(lambda: top.poll() is None and (top.kill(), top.wait()))

        def seen(cond, what):
            def probe():
                with open(out_path) as f:
                    fs = [parse_frame(x) for x in frames(f.read())[:-1]]
                return fs if fs and cond(fs[-1]) else None
            return wait_for(probe, 30, interval=0.1, what=what)

        seen(lambda f: f["master"] == lbd.pid, "a first frame")
        for i, new in enumerate((lbdtest.LBD_LAYOUT, self.lbd_bin), 1):
            self.install(new)
            n = len(lbd.log())
            lbd.signal(signal.SIGUSR2)
            wait_for(lambda: (lambda s: s and s["upgrades"] == i)(self.snapshot_with(lbd, new)),
                     30, what="the upgrade to settle")
            self.wait_all_workers_run(lbd, exe_id(self.binary))
            self.assertIn("starting fresh", lbd.log()[n:])
            if new == lbdtest.LBD_LAYOUT:
                seen(lambda f: f["master"] is None and
                     "cannot read the shared memory" in f["text"],
                     "lbtop to let the replaced segment go")
        for _ in range(7):
            self.assertEqual(lbdtest.http_get(lbd.listen).status, 200)
        fs = seen(lambda f: f["master"] == lbd.pid and
                  sum(w["requests"] for w in f["workers"]) == 7,
                  "lbtop to re-attach and count the 7 requests")
        self.assertIsNone(top.poll(), "lbtop kept running")

    def test_upgrade_then_stop_and_signals(self):
        """Workers and the control process ignore USR2; a reload right
        behind an upgrade; the upgraded master is a master like any: HUP
        reloads, TERM stops it and its workers
        (the adopted ones were reaped: no zombie) and removes the pid
        file."""
        b1, = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        lbd = self.start(self.config(listen, [(b1.addr, 1)], check=None), listen)
        # USR2 to the whole group (systemctl kill without --kill-who=main):
        # the workers and the control process ignore it.
        kids = proc_children(lbd.pid)
        self.assertEqual(len(kids), 3)
        for k in kids:
            os.kill(k, signal.SIGUSR2)
        self.install(lbdtest.LBD_B)
        # A reload right behind the upgrade (its HUP waits out the probe
        # and the exec, or comes while the new workers settle).
        lbd.signal(signal.SIGUSR2)
        lbd.reload()
        wait_for(lambda: lbd.snapshot()["upgrades"] == 1, 30, what="the upgrade")
        self.assertEqual(lbd.snapshot()["totals"]["worker_restarts"], 0)
        self.wait_all_workers_run(lbd, exe_id(self.binary))
        wait_for(lambda: len(self.workers_of(lbd)) == 2, 15, what="two workers, no more")
        self.assertFalse(any(pid_alive(k) for k in kids), "the old processes are gone")
        # No zombie: the old workers were reaped by the new image.
        for k in proc_children(lbd.pid):
            with open(f"/proc/{k}/stat") as f:
                self.assertNotEqual(f.read().rsplit(")", 1)[1].split()[0], "Z", proc_title(k))
        lbd.reload()
        self.assertEqual(lbd.snapshot()["version"], "0.2.0+b")
        lbd.stop()
        self.assertFalse(os.path.exists(self.pid_file))
        self.assertFalse(pid_alive(lbd.pid))

    def test_failed_going_back_keeps_no_fd_of_the_old_binary(self):
        """New workers die at start and going back fails too (the old
        binary's file lost its execute permission): the master logs it,
        the old workers serve on, and the master holds the files it held
        before (not the old binary's)."""
        self.expect_worker_deaths()
        b1, = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"
        lbd = self.start(self.config(listen, [(b1.addr, 1)], check=None), listen)
        before = master_fds(lbd.pid)
        self.install(lbdtest.LBD_CRASH)
        os.chmod(f"/proc/{lbd.pid}/exe", 0o644)     # the replaced file, still running
        off = lbd.log_size()
        lbd.signal(signal.SIGUSR2)
        lbd.wait_log(r"upgrade: going back failed", since=off, timeout=30)
        self.assertEqual(http_get(lbd.listen).status, 200)
        def files(fds):
            """Sockets aside: the crashing workers' are parked (closed) by turns."""
            return sorted(t for t in fds.values() if not t.startswith("socket:"))
        self.assertEqual(files(master_fds(lbd.pid)), files(before))

    def child_fds(self, lbd, title):
        """What the fds of lbd's child whose process title is TITLE point
        to, sorted, without inode numbers ("socket:", "pipe:", a path)."""
        for pid in proc_children(lbd.pid):
            if proc_title(pid) == title:
                return sorted(re.sub(r"\[\d+\]", "", t) for t in master_fds(pid).values())
        self.fail(f"no {title!r} among {[proc_title(p) for p in proc_children(lbd.pid)]}")

    def test_no_fd_leak_across_reloads_scaling_and_upgrades(self):
        """The master holds as many fds after 5 reloads, 3 scalings up and
        down (lbd -S and TTIN/TTOU), a few control socket clients and 2
        upgrades as before them: with eBPF steering and the admin listener
        on, whose sockets and programs are replaced along the way."""
        from test_steering import control_socket_name
        b1, = self.start_backends("b1")
        listen = f"127.0.0.1:{free_port()}"

        def cfg(steering, admin):
            return lbd_config(listen, [{"name": "web", "servers": [(b1.addr, 1)]}], workers=2,
                              listener={"steering": steering}, admin=admin)
        admin1, admin2 = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        lbd = self.start(cfg("client_ip", admin1), listen)
        steering = lbd.snapshot()["steering"]["mode"] == "client_ip"
        before = master_fds(lbd.pid)
        kids = {t: self.child_fds(lbd, t) for t in ("lbd: worker 0", "lbd: worker 1",
                                                     "lbd: control")}

        def settled(n):
            """N workers, none draining, no control process exiting."""
            def probe():
                ws = lbd.snapshot()["workers"]
                return (len(ws) == n and all(w["state"] == "running" for w in ws) and
                        len(proc_children(lbd.pid)) == n + 1)
            wait_for(probe, 30, what=f"{n} running workers and nothing else")

        # The steering program detached and loaded again, the admin socket
        # moved and back.
        lbd.reload()
        lbd.reload(cfg("kernel", admin2))
        lbd.reload()
        lbd.reload(cfg("client_ip", admin1))
        lbd.reload()
        for req in (b"", b"S", b"Sx", b"G", b"\xff" * 40):
            with socket.socket(socket.AF_UNIX) as c:
                c.connect(control_socket_name(lbd.config_path))
                c.sendall(req)
                c.shutdown(socket.SHUT_WR)
                c.settimeout(20)
                c.recv(256)
        for i in range(3):
            if i == 1:
                lbd.signal(signal.SIGTTIN)
                settled(3)
                lbd.signal(signal.SIGTTOU)
                settled(2)
                continue
            for n in (3, 2):
                r = subprocess.run([self.lbd_bin, "-S", str(n), "-c", lbd.config_path],
                                   capture_output=True, text=True, timeout=30)
                self.assertEqual(r.returncode, 0, r.stderr)
                settled(n)
        for new in (lbdtest.LBD_B, self.lbd_bin):
            self.install(new)
            self.upgrade(lbd)
            self.wait_all_workers_run(lbd, exe_id(self.binary))
        settled(2)
        self.assertEqual(lbd.snapshot()["steering"]["mode"],
                         "client_ip" if steering else "kernel")
        after = master_fds(lbd.pid)
        self.assertEqual(len(after), len(before),
                         f"before: {sorted(before.items())}\nafter: {sorted(after.items())}")
        self.assertEqual({t: self.child_fds(lbd, t) for t in kids}, kids,
                         "the new workers and control process hold what the first ones held")
        lbd.stop()


if __name__ == "__main__":
    unittest.main()
