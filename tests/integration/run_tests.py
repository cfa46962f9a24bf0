#!/usr/bin/python3
"""Tiny runner for the wsed integration tests (tests/integration/test_*.py, functions test_*).

Each test runs in its own child process (new session) with a hard time limit; a test that overruns is
killed with its process group (the servers it started) and counted as failed.
Prints "PASS name (s)" / "FAIL name: why" per test and, last, "N passed, N failed".

Usage: /usr/bin/python3 tests/integration/run_tests.py [--build build] [--wsed PATH] [-k SUBSTR]
                                                       [--skip SUBSTR] [--sanitizers] [--list]
"""

import argparse
import importlib
import inspect
import os
import signal
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
MODULES = ["test_wsed", "test_deflate", "test_wse_bench", "test_wse", "test_wse_features", "test_e2e", "test_fanout", "test_redis", "test_recovery", "test_redis_recovery", "test_redis_groups", "test_redis_presence", "test_presence", "test_queue_groups", "test_tls", "test_config", "test_metrics", "test_service", "test_faults", "test_logs", "test_slowloris", "test_soak"]


def collect():
    tests = []
    for mname in MODULES:
        mod = importlib.import_module(mname)
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            if name.startswith("test_") and fn.__module__ == mname:
                tests.append((mname, name, fn, getattr(fn, "time_limit", 60), inspect.getsourcelines(fn)[1]))
    tests.sort(key=lambda t: (t[0], t[4]))
    return tests


def run_one(mname, name):
    mod = importlib.import_module(mname)
    try:
        getattr(mod, name)()
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--wsed", help="wsed binary (default BUILD/engine/wsed)")
    ap.add_argument("-k", action="append", default=[], help="run tests whose name contains this")
    ap.add_argument("--skip", action="append", default=[], help="skip tests whose name contains this")
    ap.add_argument("--sanitizers", action="store_true", help="ASan/UBSan build: set options, check stderr")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()

    import wsed_harness as H
    if args.one:
        # A child: the parent already put the binary and the sanitizer switch in the environment.
        mname, name = args.one.split(":")
        return run_one(mname, name)

    os.environ["WSED_BIN"] = os.path.abspath(args.wsed) if args.wsed else H.wsed_binary(args.build)
    if args.sanitizers:
        os.environ["WSED_SANITIZERS"] = "1"
    print("# wsed binary under test: %s%s" % (os.environ["WSED_BIN"], " (sanitizers)" if args.sanitizers else ""),
          flush=True)

    tests = [t for t in collect()
             if (not args.k or any(k in t[1] for k in args.k)) and not any(s in t[1] for s in args.skip)]
    if args.list:
        for t in tests:
            print(t[1])
        return 0
    passed = failed = 0
    for k in args.k:   # a -k that selects nothing (a renamed test) must not pass silently
        if not any(k in t[1] for t in tests):
            failed += 1
            print("FAIL -k %s: no test name contains it" % k, flush=True)
    for mname, name, fn, limit, _ in tests:
        t0 = time.monotonic()
        p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--one", "%s:%s" % (mname, name)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True, env=os.environ)
        try:
            out, _ = p.communicate(timeout=limit)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)   # the child's own session: the test and the servers it started
            out, _ = p.communicate(timeout=10)
            rc = "timeout"
        dt = time.monotonic() - t0
        text = out.decode("utf-8", "replace")
        if rc == 0:
            passed += 1
            print("PASS %s (%.1fs)" % (name, dt), flush=True)
        else:
            failed += 1
            why = "killed after the %ss time limit" % limit if rc == "timeout" else "exit %s" % rc
            lines = [ln for ln in text.strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else ""
            print("FAIL %s (%.1fs): %s: %s" % (name, dt, why, last), flush=True)
            for ln in lines[-25:]:
                print("    | " + ln)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
