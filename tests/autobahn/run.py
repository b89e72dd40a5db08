#!/usr/bin/env python3
"""Autobahn TestSuite conformance harness (driven by kosoku), diffed against a baseline.

Starts the WebSocket echo server under test on a free loopback port, runs the selected
Autobahn cases against it with kosoku, one case group (e.g. 6.4) per subprocess under a
hard deadline, and compares every case's (behavior, behaviorClose) with a checked-in
baseline. Any difference -- a regression or an improvement -- fails the run until it is
acknowledged with --update; so does any case whose verdicts are not clean.

kosoku has no handshake or per-case timeout: a stalled server would hang it forever.
That is why each group runs in its own subprocess that is killed at its deadline.

Exit codes: 0 all cases match the baseline and none failed; 1 differences or failed
cases; 2 the harness could not run (bad arguments, kosoku missing, server did not start).

See README.md next to this file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

# Verdicts under which a case counts as clean. kosoku's own `CaseResult.passed` uses the
# same set for both verdicts (UNIMPLEMENTED, WRONG CODE, UNCLEAN, ... are not clean).
CLEAN_VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL")
# Verdict recorded by this harness for a case that did not finish before its group's deadline.
TIMEOUT = "TIMEOUT"
# Verdict recorded by this harness for a case whose group subprocess died without a result.
NO_RESULT = "NO-RESULT"
# Summary columns; every other verdict is counted under "other" and listed by name.
SUMMARY_COLUMNS = ("OK", "NON-STRICT", "INFORMATIONAL", "FAILED")
# Verdict ordering used only to label a difference as regression or improvement.
_RANK = {"OK": 0, "NON-STRICT": 1, "INFORMATIONAL": 1, "UNIMPLEMENTED": 2}
_RANK_BAD = 3

HERE = os.path.dirname(os.path.abspath(__file__))
THIS_FILE = os.path.abspath(__file__)


def case_sort_key(case_id: str) -> list[int]:
    """Numeric order: 1.2.10 after 1.2.9, 10.1.1 after 9.8.6."""
    return [int(p) for p in case_id.split(".")]


def import_case_index() -> dict:
    try:
        from kosoku.cases import CASES  # noqa: PLC0415 (optional dependency)
    except ImportError as exc:  # pragma: no cover - environment problem
        sys.exit(f"error: cannot import kosoku ({exc}); install it with: pip install kosoku")
    return CASES


# ---------------------------------------------------------------------------------------
# Case selection
# ---------------------------------------------------------------------------------------


def select_cases(spec: str, all_ids: list[str]) -> list[str]:
    """Select case ids from a spec such as "1-10", "1-7,9", "6.4", "6.4.3,7".

    Matching is on whole dotted components, never kosoku's `*` glob (which also matches
    dots, so `1*` would pull in 10.*, 12.* and 13.*). "A-B" is a range of major numbers.
    """
    selected: set[str] = set()
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        if "-" in item:
            lo_s, _, hi_s = item.partition("-")
            try:
                lo, hi = int(lo_s), int(hi_s)
            except ValueError:
                raise SystemExit(f"error: bad case range {item!r} (expected e.g. 1-10)")
            matched = [c for c in all_ids if lo <= int(c.split(".")[0]) <= hi]
        else:
            parts = item.split(".")
            if not all(p.isdigit() for p in parts):
                raise SystemExit(f"error: bad case selector {item!r}")
            matched = [c for c in all_ids if c.split(".")[: len(parts)] == parts]
        if not matched:
            raise SystemExit(f"error: case selector {item!r} matches no case")
        selected.update(matched)
    if not selected:
        raise SystemExit("error: --cases selects nothing")
    return sorted(selected, key=case_sort_key)


def group_cases(case_ids: list[str]) -> list[tuple[str, list[str]]]:
    """Group by Autobahn subcategory ("6.4", "9.1", "2.3"), each one deadline unit."""
    groups: dict[str, list[str]] = {}
    for cid in case_ids:
        groups.setdefault(".".join(cid.split(".")[:2]), []).append(cid)
    ordered = sorted(groups.items(), key=lambda kv: case_sort_key(kv[0]))
    # Start the slow groups first so that they overlap with the many short ones instead of
    # trailing at the end: 6.4.x mostly waits (~2 s per case), 9.x moves up to 16 MiB per case.
    slow = [g for g in ordered if g[0] == "6.4"] + [g for g in ordered if g[0].startswith("9.")]
    return slow + [g for g in ordered if g not in slow]


# ---------------------------------------------------------------------------------------
# Server under test
# ---------------------------------------------------------------------------------------


def pick_free_port(host: str) -> int:
    """A free port below the ephemeral range (field notes: keep test ports < 32768, since
    ephemeral ports can be held by client sockets or TIME_WAIT). Bound without
    SO_REUSEADDR, so a port lingering in TIME_WAIT is skipped too."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # fall back to the OS
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """The echo server under test, run in its own session so the whole process group
    (a shell, `cargo run`, the server itself) can be stopped together."""

    def __init__(self, cmd: str, host: str, port: int, log_path: str):
        self.cmd = cmd.replace("{port}", str(port))
        self.host = host
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            self.cmd,
            shell=True,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float) -> str | None:
        """Wait until the port accepts a TCP connection; return an error text or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                return f"server exited with code {rc} before accepting connections"
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return None
            except OSError:
                time.sleep(0.1)
        return f"server did not accept on {self.host}:{self.port} within {timeout:g} s"

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()[-8192:]
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


# ---------------------------------------------------------------------------------------
# Group runner (parent side)
# ---------------------------------------------------------------------------------------


def run_group(
    url: str, group: str, ids: list[str], deadline: float, report_dir: str | None
) -> tuple[dict[str, dict], str | None]:
    """Run one group in a kosoku subprocess killed at `deadline` seconds.

    Returns (results by case id, note). Cases that finished keep their verdicts; those
    that did not are TIMEOUT (deadline hit) or NO-RESULT (the subprocess died)."""
    cmd = [sys.executable, THIS_FILE, "--_child", "--url", url, "--ids", ",".join(ids)]
    if report_dir:
        cmd += ["--report-dir", report_dir]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        out, err = proc.communicate()
    results: dict[str, dict] = {}
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("id") in ids:
            results[rec["id"]] = rec
    missing = [c for c in ids if c not in results]
    note = None
    if missing:
        verdict = TIMEOUT if timed_out else NO_RESULT
        for cid in missing:
            results[cid] = {"id": cid, "behavior": verdict, "behaviorClose": verdict}
        if timed_out:
            note = (
                f"group {group}: deadline of {deadline:g} s hit; "
                f"{len(missing)} case(s) marked {TIMEOUT}: {', '.join(missing)}"
            )
        else:
            tail = err.decode("utf-8", "replace").strip().splitlines()[-5:]
            note = (
                f"group {group}: kosoku subprocess exited ({proc.returncode}) without "
                f"results for {', '.join(missing)}" + ("\n    " + "\n    ".join(tail) if tail else "")
            )
    return results, note


def run_all(
    url: str,
    groups: list[tuple[str, list[str]]],
    parallel: int,
    deadline: float,
    report_dir: str | None,
) -> tuple[dict[str, dict], list[str]]:
    results: dict[str, dict] = {}
    notes: list[str] = []
    lock = threading.Lock()

    def job(group: str, ids: list[str]) -> None:
        res, note = run_group(url, group, ids, deadline, report_dir)
        with lock:
            results.update(res)
            if note:
                notes.append(note)
                print(f"  ! {note}", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [pool.submit(job, g, ids) for g, ids in groups]
        for fut in futures:
            fut.result()
    return results, notes


# ---------------------------------------------------------------------------------------
# Child: runs one group's cases with kosoku and streams one JSON line per case
# ---------------------------------------------------------------------------------------


def child_main(url: str, ids: list[str], report_dir: str | None) -> None:
    """Run cases one at a time so that each finished case is reported before a later
    one can stall; the parent keeps every line it received even if it kills us."""
    from kosoku import FailureError, run_fuzzingclient  # noqa: PLC0415

    case_to_dict = None
    if report_dir:
        try:
            from kosoku._report import case_to_dict  # noqa: PLC0415 (private, best effort)
        except ImportError:
            case_to_dict = None
        os.makedirs(os.path.join(report_dir, "cases"), exist_ok=True)

    async def run() -> None:
        for cid in ids:
            try:
                got = await run_fuzzingclient(url, [cid], None, concurrency=1)
            except FailureError as failure:  # raised when the case is not clean
                got = failure.results
            for r in got:
                rec = {
                    "id": r.case_id,
                    "behavior": r.behavior.value,
                    "behaviorClose": r.behavior_close.value,
                    "duration": r.duration,
                    "remoteCloseCode": r.remote_close_code,
                }
                if case_to_dict is not None:
                    path = os.path.join(report_dir, "cases", r.case_id + ".json")
                    with open(path, "w") as f:
                        json.dump(case_to_dict(r), f, indent=1, sort_keys=True, default=str)
                sys.stdout.write(json.dumps(rec) + "\n")
                sys.stdout.flush()

    asyncio.run(run())
    sys.stdout.flush()
    # kosoku 0.1.0 aborts (SIGABRT) at interpreter shutdown once a FailureError has been
    # raised; every result is already written, so leave without running finalizers.
    os._exit(0)


# ---------------------------------------------------------------------------------------
# Baseline comparison and summary
# ---------------------------------------------------------------------------------------


def is_failed(rec: dict) -> bool:
    return rec["behavior"] not in CLEAN_VERDICTS or rec["behaviorClose"] not in CLEAN_VERDICTS


def severity(rec: dict) -> tuple[int, int]:
    """(worst verdict rank, sum of ranks): orders a change as regression or improvement."""
    ranks = (
        _RANK.get(rec.get("behavior"), _RANK_BAD),
        _RANK.get(rec.get("behaviorClose"), _RANK_BAD),
    )
    return (max(ranks), sum(ranks))


def verdict_text(rec: dict | None) -> str:
    if rec is None:
        return "(not in baseline)"
    return f"{rec.get('behavior')} / {rec.get('behaviorClose')}"


def load_expected(path: str) -> dict[str, dict] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise SystemExit(f"error: {path}: expected a JSON object keyed by case id")
    return data


def write_expected(path: str, data: dict[str, dict]) -> None:
    ordered = {
        cid: {"behavior": data[cid]["behavior"], "behaviorClose": data[cid]["behaviorClose"]}
        for cid in sorted(data, key=case_sort_key)
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # One case per line, so that a review diff shows exactly the cases that changed.
    lines = [f"  {json.dumps(cid)}: {json.dumps(rec)}" for cid, rec in ordered.items()]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")
    os.replace(tmp, path)


def count_verdicts(results: dict[str, dict], key: str) -> tuple[dict[str, int], dict[str, int]]:
    main = {k: 0 for k in SUMMARY_COLUMNS}
    other: dict[str, int] = {}
    for rec in results.values():
        v = rec[key]
        if v in main:
            main[v] += 1
        else:
            other[v] = other.get(v, 0) + 1
    return main, other


def format_counts(label: str, results: dict[str, dict], key: str) -> str:
    main, other = count_verdicts(results, key)
    cols = "  ".join(f"{k} {v}" for k, v in main.items())
    extra = ""
    if other:
        extra = " (" + ", ".join(f"{k} {v}" for k, v in sorted(other.items())) + ")"
    return f"  {label:<14} {cols}  other {sum(other.values())}{extra}"


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Run Autobahn cases (kosoku) against an echo server and diff the "
        "verdicts against a checked-in baseline."
    )
    p.add_argument("--server-cmd", help="shell command starting the echo server; "
                   "the literal {port} is replaced by the chosen port")
    p.add_argument("--cases", default="1-10",
                   help="case selection: major ranges and dotted prefixes, comma separated "
                   "(e.g. 1-10, 1-7,9, 6.4.3)")
    p.add_argument("--expected", default=os.path.join(HERE, "expected-results.json"),
                   help="baseline file: {case id: {behavior, behaviorClose}}")
    p.add_argument("--update", action="store_true",
                   help="write this run's verdicts for the selected cases into --expected "
                   "(other cases in the file are kept)")
    p.add_argument("--report-dir", help="write summary.json, results.json, server.log and "
                   "kosoku's per-case reports (cases/<id>.json) here")
    p.add_argument("--parallel", type=int, default=1,
                   help="case groups run at the same time (each group runs its cases in order)")
    p.add_argument("--deadline-per-group", type=float, default=60.0,
                   help="seconds before a group's kosoku process is killed; "
                   "its unfinished cases become TIMEOUT")
    p.add_argument("--startup-timeout", type=float, default=60.0,
                   help="seconds to wait for the server to accept connections")
    p.add_argument("--host", default="127.0.0.1", help="loopback address the server binds")
    # Internal: group subprocess mode.
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--ids", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args._child and not args.server_cmd:
        p.error("--server-cmd is required")
    if args.parallel < 1:
        p.error("--parallel must be at least 1")
    if args.deadline_per_group <= 0:
        p.error("--deadline-per-group must be positive")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args._child:
        child_main(args.url, args.ids.split(","), args.report_dir)
        return 0  # not reached

    all_ids = list(import_case_index())
    case_ids = select_cases(args.cases, all_ids)
    groups = group_cases(case_ids)

    report_dir = os.path.abspath(args.report_dir) if args.report_dir else None
    scratch = None
    if report_dir:
        os.makedirs(report_dir, exist_ok=True)
        log_dir = report_dir
    else:
        scratch = tempfile.mkdtemp(prefix="autobahn-")
        log_dir = scratch

    port = pick_free_port(args.host)
    url = f"ws://{args.host}:{port}"
    print(f"autobahn: {len(case_ids)} cases in {len(groups)} groups, parallel {args.parallel}, "
          f"deadline {args.deadline_per_group:g} s/group", flush=True)
    server = Server(args.server_cmd, args.host, port, os.path.join(log_dir, "server.log"))
    print(f"autobahn: server: {server.cmd}", flush=True)
    started = time.monotonic()
    server_note = None
    try:
        err = server.wait_ready(args.startup_timeout)
        if err:
            print(f"error: {err}", file=sys.stderr)
            tail = server.log_tail()
            if tail:
                print("server log (tail):\n" + tail, file=sys.stderr)
            print(f"0 passed, {len(case_ids)} failed")
            return 2
        ready_at = time.monotonic()
        print(f"autobahn: server ready on {url} after {ready_at - started:.1f} s", flush=True)
        results, notes = run_all(url, groups, args.parallel, args.deadline_per_group, report_dir)
        run_secs = time.monotonic() - ready_at
        rc = server.exit_code()
        if rc is not None:
            server_note = f"server exited with code {rc} during the run"
            tail = server.log_tail()
            if tail:
                server_note += "; server log (tail):\n" + tail
    finally:
        server.stop()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    # ---- compare with the baseline ----
    expected = load_expected(args.expected)
    baseline_missing = expected is None
    expected = expected or {}
    diffs = []  # (case id, expected rec or None, got rec, label)
    for cid in case_ids:
        got = results[cid]
        exp = expected.get(cid)
        if exp is not None and (exp.get("behavior"), exp.get("behaviorClose")) == (
            got["behavior"], got["behaviorClose"]
        ):
            continue
        if exp is None:
            label = "new"
        else:
            s_exp, s_got = severity(exp), severity(got)
            if s_got > s_exp:
                label = "REGRESSION"
            elif s_got < s_exp:
                label = "improvement"
            else:
                label = "changed"
        diffs.append((cid, exp, got, label))
    failed_ids = [cid for cid in case_ids if is_failed(results[cid])]
    diff_ids = {d[0] for d in diffs}

    # ---- report ----
    print()
    print(f"Summary ({len(case_ids)} cases, {run_secs:.1f} s):")
    print(format_counts("behavior", results, "behavior"))
    print(format_counts("behaviorClose", results, "behaviorClose"))
    for note in notes:
        print(f"  ! {note}")
    if server_note:
        print(f"  ! {server_note}")

    if failed_ids:
        print(f"\nFailed cases ({len(failed_ids)}): verdicts outside {', '.join(CLEAN_VERDICTS)}")
        for cid in failed_ids:
            print(f"  {cid:<10} {verdict_text(results[cid])}")

    if args.update:
        merged = dict(expected)
        for cid in case_ids:
            merged[cid] = results[cid]
        write_expected(args.expected, merged)
        if diffs:
            print(f"\nBaseline updated: {len(diffs)} case(s) changed in {args.expected}")
            for cid, exp, got, label in diffs:
                print(f"  {cid:<10} {verdict_text(exp):<34} -> {verdict_text(got)}  [{label}]")
        else:
            print(f"\nBaseline unchanged: {args.expected}")
        if failed_ids:
            print("warning: the baseline now records failed cases; the run still fails "
                  "until they are fixed")
    elif baseline_missing:
        print(f"\nBaseline {args.expected} does not exist: every case differs. "
              "Create it with --update.")
    elif diffs:
        print(f"\nDifferences from baseline {args.expected} ({len(diffs)}):")
        for cid, exp, got, label in diffs:
            print(f"  {cid:<10} expected {verdict_text(exp):<34} got {verdict_text(got)}  [{label}]")
        print("Regressions must be fixed; improvements and other changes must be acknowledged "
              "by re-running with --update and committing the baseline.")
    else:
        print(f"\nAll {len(case_ids)} cases match baseline {args.expected}")

    mismatched = set() if args.update else diff_ids
    bad = mismatched | set(failed_ids)
    n_failed = len(bad)
    n_passed = len(case_ids) - n_failed

    if report_dir:
        with open(os.path.join(report_dir, "results.json"), "w") as f:
            json.dump({cid: {"behavior": results[cid]["behavior"],
                             "behaviorClose": results[cid]["behaviorClose"]}
                       for cid in case_ids}, f, indent=2)
            f.write("\n")
        with open(os.path.join(report_dir, "summary.json"), "w") as f:
            json.dump({
                "server_cmd": server.cmd,
                "cases": args.cases,
                "parallel": args.parallel,
                "deadline_per_group": args.deadline_per_group,
                "seconds": round(run_secs, 2),
                "behavior": dict(zip(("main", "other"), count_verdicts(results, "behavior"))),
                "behaviorClose": dict(zip(("main", "other"),
                                          count_verdicts(results, "behaviorClose"))),
                "failed": failed_ids,
                "differences": [{"id": cid, "expected": exp, "got": {
                    "behavior": got["behavior"], "behaviorClose": got["behaviorClose"]},
                    "kind": label} for cid, exp, got, label in diffs],
                "notes": notes + ([server_note] if server_note else []),
                "passed": n_passed,
                "failed_count": n_failed,
                "per_case": {cid: results[cid] for cid in case_ids},
            }, f, indent=1)
        print(f"Reports in {report_dir}")

    print(f"{n_passed} passed, {n_failed} failed")
    if server_note or bad:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
