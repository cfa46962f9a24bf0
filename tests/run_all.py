#!/usr/bin/python3
"""Run every wsed test suite and print one summary.

  /usr/bin/python3 tests/run_all.py --build build [--asan-build build-asan]

Suites (each bounded in time):
  unit              BUILD/tests/wsed_unit_tests (doctest; "test cases: X | Y passed | Z failed")
  integration       tests/integration/run_tests.py against BUILD/engine/wsed
  node              tests/node/echo_test.js (Node `ws` client) against BUILD/engine/wsed; tests/node/tls_test.js (wss://)
  browser           tests/browser/demo_test.js: the demo page (GET /) in headless /usr/bin/chromium; tests/browser/tls_test.js (https://, wss://)
                    (playwright-core) against BUILD/engine/wsed; chromium missing counts as a failure
  conformance       tests/conformance/conformance.py against BUILD/engine/wsed
  conformance[tls]  the same over TLS (wsed --tls-cert-file; the cases go through tests/conformance/tls_relay.py)
  python            tests/python (pytest, Debian's python3-pytest): the Python module of BUILD/python
  package           tests/package_test.py: dpkg-buildpackage of a copy of the tree, dpkg -i, the installed wsed
                    started as its unit would and taking a client, dpkg -r / --purge (root; ~3 minutes)
  unit[asan], conformance[asan], conformance[tls,asan], integration[asan], python[asan]   the same against the ASan+UBSan
                    build (python[asan]: /usr/bin/python3 with the ASan runtime preloaded)
                    (halt_on_error=1; the server's exit code and stderr are checked for sanitizer reports)
Prints a per-suite summary and, as the very last line, "N passed, N failed" summed over every test of
every suite.  Exit code 0 only when nothing failed.
"""

import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "integration"))
import wsed_harness as H  # noqa: E402

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
RESULT_RE = re.compile(r"^(?:\w+: )?(\d+) passed, (\d+) failed", re.M)
DOCTEST_RE = re.compile(r"test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed")


def build_path(b):
    return b if os.path.isabs(b) else os.path.join(REPO, b)


def run(argv, timeout, env=None, label=""):
    """Run a command with a hard time limit, streaming its output. Returns (rc|'timeout', output)."""
    e = dict(os.environ)
    if env:
        e.update(env)
    print("## %s: %s" % (label, " ".join(argv)), flush=True)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=e, cwd=REPO, start_new_session=True)
    out = []
    deadline = time.monotonic() + timeout
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    rc = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            import signal
            os.killpg(p.pid, signal.SIGKILL)   # the child's own session (it and what it started)
            p.wait(timeout=10)
            rc = "timeout"
            break
        if sel.select(timeout=min(left, 1.0)):
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                rc = p.wait(timeout=max(1, left))
                break
            s = chunk.decode("utf-8", "replace")
            out.append(s)
            sys.stdout.write(s)
            sys.stdout.flush()
    sel.close()
    return rc, "".join(out)


def counts_from(out, rc, label):
    """(passed, failed, note) from a 'N passed, N failed' last result line."""
    found = RESULT_RE.findall(out)
    if not found:
        return 0, 1, "no 'N passed, N failed' line (exit %s)" % rc
    p, f = int(found[-1][0]), int(found[-1][1])
    note = ""
    if rc == "timeout":
        f += 1
        note = "killed at its time limit"
    elif rc != 0 and f == 0:
        f += 1
        note = "exit code %s with no failed test" % rc
    return p, f, note


def with_run_checks(p, f, notes, rc, out, sanitizers):
    """(passed, failed, note) of a suite's counts once the run itself is judged: killed at its
    time limit, a failing exit code with no failed test, a sanitizer report: one more failure."""
    if rc == "timeout":
        f += 1
        notes.append("killed at its time limit")
    elif rc != 0 and f == 0:
        f += 1
        notes.append("exit code %s with no failed test" % rc)
    if sanitizers:
        found = [mk for mk in H.SANITIZER_MARKERS if mk in out]
        if found:
            f += 1
            notes.append("sanitizer report: %s" % found)
    return p, f, "; ".join(notes)


def suite_unit(build, label, sanitizers=False, cases=None):
    binary = os.path.join(build_path(build), "tests", "wsed_unit_tests")
    if not os.path.exists(binary):
        return 0, 1, "missing unit test binary %s (not built?)" % binary
    env = H.SANITIZER_ENV if sanitizers else None
    rc, out = run([binary] + (["--test-case=" + cases] if cases else []), timeout=240, env=env,
                  label=label)
    m = DOCTEST_RE.findall(out)
    if not m:
        return 0, 1, "no doctest 'test cases:' line (exit %s)" % rc
    total, p, f = (int(x) for x in m[-1])
    notes = []
    if total == 0:   # e.g. --test-case=per_ip* after a rename: nothing ran, nothing passed
        f += 1
        notes.append("no test case ran")
    return with_run_checks(p, f, notes, rc, out, sanitizers)


def suite_integration(build, label="integration", sanitizers=False, only=()):
    binary = H.wsed_binary(build_path(build))
    if not os.path.exists(binary):
        return 0, 1, "missing %s" % binary
    argv = [PY, os.path.join(HERE, "integration", "run_tests.py"), "--wsed", binary, "--skip", "test_echo_node_ws"]
    for k in only:
        argv += ["-k", k]
    if sanitizers:
        argv.append("--sanitizers")
    rc, out = run(argv, timeout=1500, label=label)
    return counts_from(out, rc, label)


PYTEST_RE = re.compile(r"^(?:=+ )?(\d+ (?:passed|failed|errors?|skipped)\b.*?) in [\d.]+s", re.M)


def sanitizer_runtime(name="libasan.so"):
    """A sanitizer runtime gcc links against (preloaded into python3 for a sanitized module)."""
    try:
        path = subprocess.run(["gcc", "-print-file-name=" + name], capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


def suite_python(build, label="python", sanitizers=False):
    """pytest over tests/python with BUILD/python on the path; counts from pytest's summary line
    ("3 failed, 50 passed, 1 skipped": skipped tests count as failed, nothing may be skipped)."""
    pydir = os.path.join(build_path(build), "python")
    if not os.path.isdir(os.path.join(pydir, "wsed")):
        return 0, 1, "missing %s/wsed (the Python module was not built: python3-dev, pybind11-dev?)" % pydir
    env = {"WSED_PYTHON_DIR": pydir, "PYTHONPATH": pydir, "PYTHONDONTWRITEBYTECODE": "1"}
    if sanitizers == "thread":
        rt = sanitizer_runtime("libtsan.so")
        if not rt:
            return 0, 1, "no TSan runtime (gcc -print-file-name=libtsan.so)"
        env["LD_PRELOAD"] = rt
        env["TSAN_OPTIONS"] = "halt_on_error=1:exitcode=66:suppressions=%s" % os.path.join(
            HERE, "python", "tsan.supp")
    elif sanitizers:
        rt = sanitizer_runtime()
        if not rt:
            return 0, 1, "no ASan runtime (gcc -print-file-name=libasan.so)"
        # libstdc++ too: python3 does not link it, and ASan's interceptors must see its
        # exception runtime from the start (else the first C++ exception the module throws,
        # turned into a Python exception, aborts).
        cxx = sanitizer_runtime("libstdc++.so.6")
        env["LD_PRELOAD"] = rt + (" " + cxx if cxx else "")
        # CPython keeps objects until exit: stacks through the interpreter are suppressed
        # (tests/python/lsan.supp); leaks made on the engine's own threads are still reported.
        # (slow unwinding: full stacks through libraries built without frame pointers, so the
        # suppressions match whole stacks)
        env["ASAN_OPTIONS"] = "detect_leaks=1:halt_on_error=1:abort_on_error=1:fast_unwind_on_malloc=0"
        env["LSAN_OPTIONS"] = "suppressions=%s:print_suppressions=0" % os.path.join(HERE, "python", "lsan.supp")
        env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1"
    rc, out = run([PY, "-m", "pytest", os.path.join(HERE, "python"), "-q", "-p", "no:cacheprovider",
                   "-o", "faulthandler_timeout=120"], timeout=900, env=env, label=label)
    m = PYTEST_RE.findall(out)
    if not m:
        return 0, 1, "no pytest summary line (exit %s)" % rc
    counts = dict((k, int(n)) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)",
                                                     m[-1]))
    p = counts.get("passed", 0)
    f = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0) + counts.get("skipped", 0)
    notes = []
    return with_run_checks(p, f, notes, rc, out, sanitizers)


def suite_fuzz(seconds):
    """The libFuzzer targets of tests/fuzz/ (clang, ASan+UBSan), each for a bounded time."""
    # Seven targets, each built from source (clang, sanitizers) before its run.
    rc, out = run(["bash", os.path.join(REPO, "tools", "fuzz.sh"), str(seconds)], timeout=seconds * 8 + 600,
                  label="fuzz")
    return counts_from(out, rc, "fuzz")


def ensure_node_modules():
    ndir = os.path.join(HERE, "node")
    if all(os.path.isdir(os.path.join(ndir, "node_modules", m)) for m in ("ws", "playwright-core")):
        return None
    rc, out = run(["npm", "ci", "--prefix", ndir, "--no-audit", "--no-fund"], timeout=180,
                  label="npm ci", env={"PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"})
    if rc != 0:
        return "npm ci in tests/node failed (exit %s)" % rc
    return None


def suite_node(build):
    binary = H.wsed_binary(build_path(build))
    if not os.path.exists(binary):
        return 0, 1, "missing %s" % binary
    err = ensure_node_modules()
    if err:
        return 0, 1, err
    srv = H.wsed_server(binary, "--mode", "echo")
    try:
        srv.start()
    except Exception as e:
        return 0, 1, "wsed did not start: %s" % e
    try:
        rc, out = run(["node", os.path.join(HERE, "node", "echo_test.js"), "ws://127.0.0.1:%d/" % srv.port],
                      timeout=120, label="node")
    finally:
        src = srv.stop(timeout=15)
    p, f, note = counts_from(out, rc, "node")
    if src != 0:
        f += 1
        note = (note + "; " if note else "") + "wsed exit code %s after SIGTERM" % src
    # wss:// (tests/node/tls_test.js starts its own wsed with a self-signed certificate)
    rc, out = run(["node", os.path.join(HERE, "node", "tls_test.js"), binary], timeout=120, label="node tls")
    tp, tf, tnote = counts_from(out, rc, "node tls")
    return p + tp, f + tf, "; ".join(n for n in (note, tnote) if n)


CHROMIUM = "/usr/bin/chromium"


def suite_browser(build):
    """The demo page driven by headless Chromium; the test starts and stops wsed itself."""
    binary = H.wsed_binary(build_path(build))
    if not os.path.exists(binary):
        return 0, 1, "missing %s" % binary
    if not os.path.exists(CHROMIUM):
        return 0, 1, "%s missing: install Debian's chromium (tools/install-deps.sh)" % CHROMIUM
    err = ensure_node_modules()
    if err:
        return 0, 1, err
    rc, out = run(["node", os.path.join(HERE, "browser", "demo_test.js"), binary], timeout=120,
                  label="browser")
    p, f, note = counts_from(out, rc, "browser")
    # the demo page over https:// and wss:// (tests/browser/tls_test.js)
    rc, out = run(["node", os.path.join(HERE, "browser", "tls_test.js"), binary], timeout=120, label="browser tls")
    tp, tf, tnote = counts_from(out, rc, "browser tls")
    return p + tp, f + tf, "; ".join(n for n in (note, tnote) if n)


def suite_conformance(build, label, sanitizers=False, tls=False):
    binary = H.wsed_binary(build_path(build))
    if not os.path.exists(binary):
        return 0, 1, "missing %s" % binary
    argv = [PY, os.path.join(HERE, "conformance", "conformance.py"), "--wsed", binary]
    if sanitizers:
        argv.append("--sanitizers")
    if tls:
        argv.append("--tls")
    rc, out = run(argv, timeout=600, label=label)
    return counts_from(out, rc, label)


def suite_package():
    """The Debian package: built, installed, started, removed (tests/package_test.py)."""
    rc, out = run([PY, os.path.join(HERE, "package_test.py")], timeout=1500, label="package")
    return counts_from(out, rc, "package")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="release build dir (default build)")
    ap.add_argument("--asan-build", help="ASan+UBSan build dir (e.g. build-asan)")
    ap.add_argument("--tsan-build", help="ThreadSanitizer build dir (e.g. build-tsan): runs the "
                    "integration tests whose code crosses threads (shards, shutdown)")
    ap.add_argument("--fuzz-seconds", type=int, default=10,
                    help="seconds per libFuzzer target (0: skip the fuzz suite)")
    ap.add_argument("--only", help="comma list of suites to run (unit,integration,node,browser,conformance,python,package)")
    args = ap.parse_args()

    only = set(args.only.split(",")) if args.only else None
    plan = [("unit", lambda: suite_unit(args.build, "unit")),
            ("integration", lambda: suite_integration(args.build)),
            ("node", lambda: suite_node(args.build)),
            ("browser", lambda: suite_browser(args.build)),
            ("conformance", lambda: suite_conformance(args.build, "conformance")),
            ("conformance[tls]", lambda: suite_conformance(args.build, "conformance[tls]", tls=True)),
            ("python", lambda: suite_python(args.build)),
            ("package", suite_package)]
    if args.asan_build:
        plan += [("unit[asan]", lambda: suite_unit(args.asan_build, "unit[asan]", sanitizers=True)),
                 ("conformance[asan]", lambda: suite_conformance(args.asan_build, "conformance[asan]",
                                                                sanitizers=True)),
                 ("conformance[tls,asan]", lambda: suite_conformance(
                     args.asan_build, "conformance[tls,asan]", sanitizers=True, tls=True)),
                 ("integration[asan]", lambda: suite_integration(args.asan_build, "integration[asan]",
                                                                 sanitizers=True)),
                 ("python[asan]", lambda: suite_python(args.asan_build, "python[asan]", sanitizers=True))]
    if args.fuzz_seconds > 0:
        plan.append(("fuzz", lambda: suite_fuzz(args.fuzz_seconds)))
    if args.tsan_build:
        # The cross-thread code: several shards sharing the accepts and the global counters,
        # the fan-out rings, router and shared frames (unit cases fanout*, the fanout_* tests),
        # the Redis bridge (redis_* tests),
        # /metrics reading every shard, the signal -> stop -> drain -> join path, the SIGHUP
        # verifier swap (main thread stores, shards load) and the per-IP table.
        plan += [("unit[tsan]", lambda: suite_unit(args.tsan_build, "unit[tsan]", sanitizers=True,
                                                   cases="per_ip*,fanout*,recovery: concurrent*")),
                 ("integration[tsan]", lambda: suite_integration(
            args.tsan_build, "integration[tsan]", sanitizers=True,
            only=("workers_2", "1000_connections", "sigterm", "sigint", "max_connections",
                  "max_unfinished", "metrics", "sighup_rotation", "per_ip",
                  # fan-out across shards: inboxes, router, frames released on another shard
                  "fanout_100_subscribers", "fanout_user_send", "fanout_client_publish",
                  "fanout_api_503", "fanout_slow_consumer_disconnect",
                  # the Redis bridge thread: its rings, interest reports, command routing, the
                  # stream lanes, frames made on it and released on the shards
                  "redis_two_instances", "redis_glob_across_instances_once_exact",
                  "redis_inbound_stream_messages", "redis_commands_route",
                  "redis_killed_and_restarted", "redis_cluster_two_instances", "redis_silent_redis",
                  "redis_one_payload_again",
                  # recovery: the sequencer's lock across shards and publishers, the bridge's
                  # history answers delivered to the shards, held frames
                  "recovery_two_shards_two_publishers", "recovery_reconnects_during_continuous",
                  "redis_recovery_hops_between_instances",
                  # presence and queue groups: the process-wide registries (shards and the
                  # bridge), member deliveries, cluster picks on the bridge thread, deferred
                  # HTTP answers
                  "redis_groups_500_publications", "redis_presence_join_leave",
                  "queue_group_round_robin_500", "presence_many_clients_both_shards"))),
                 # the Python module: its threads (the caller's, the dispatcher) enqueue for the
                 # shards, wait for their answers, and the shards push into its event queue
                 ("python[tsan]", lambda: suite_python(args.tsan_build, "python[tsan]", sanitizers="thread"))]
    results = []
    t0 = time.monotonic()
    for name, fn in plan:
        if only and name.split("[")[0] not in only:
            continue
        ts = time.monotonic()
        try:
            p, f, note = fn()
        except Exception as e:
            p, f, note = 0, 1, "suite crashed: %r" % (e,)
        results.append((name, p, f, note, time.monotonic() - ts))
    print()
    print("==== summary (%.0fs) ====" % (time.monotonic() - t0))
    tp = tf = 0
    for name, p, f, note, dt in results:
        tp += p
        tf += f
        print("%-18s %4d passed, %3d failed  (%.0fs)%s" % (name, p, f, dt, ("  -- " + note) if note else ""))
    print("%d passed, %d failed" % (tp, tf))
    return 0 if tf == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
