"""nina-federation-metrics: the federation's health on a SuperLink host, for node exporter's textfile collector.

  nina-federation-metrics --tenancy NAME [--state-db PATH] [--members-dir DIR] [--textfile-dir DIR] [--stdout]

Reads the SuperLink's state database (facts.SUPERLINK_STATE_DB, flwr's SQLite; read only, never
written) and nina-membership's records (facts.SUPERLINK_MEMBERS_DIR/<slug>.node_id: which
organisation holds which node id), and writes <textfile dir>/facts.FEDERATION_METRICS_FILE
atomically (0644), or prints it with --stdout:

  nina_federation_scrape_success{tenancy}                    1 if the state was read, else 0
  nina_federation_scrape_timestamp_seconds                   when this ran (Unix time)
  nina_federation_supernodes_registered{tenancy}             nodes whose key is registered (not unregistered)
  nina_federation_supernodes_online{tenancy}                 ... of them online
  nina_federation_supernode_online{tenancy,organisation}     1/0 per organisation with a membership record
  nina_federation_runs_total{tenancy,status}                 runs per status (pending, starting, running,
                                                             finished:completed|failed|stopped)
  nina_federation_runs_failed_total{tenancy}                 runs whose status is finished:failed

"Online" is flwr 1.31's own notion (flwr/server/superlink/linkstate/sql_linkstate.py): a node row
has `status` (registered, online, offline, unregistered) and `online_until` (Unix time), which
every heartbeat of the SuperNode moves to now + HEARTBEAT_PATIENCE (2) x its heartbeat interval.
flwr marks a node offline only lazily, when it next reads the table, so a row may still say
`online` after its deadline: online here means status = 'online' AND online_until > now, exactly
what flwr would report at this instant (`flwr supernode ls`). Registered means status !=
'unregistered'. A run's status is that of its primary task (run.primary_task_id -> task):
finished if finished_at is set (with its sub_status), else running, starting or pending by
running_at, starting_at (flwr's determine_task_status). flwr fails runs whose task token expired
only when it next looks, so a run whose ServerApp died may show as running until then.

The database is never written, nor anything created beside it: flwr keeps it in WAL mode, and
even a `mode=ro` reader of a WAL database makes its -wal and -shm files when they are missing (and
leaves them); under its unit's read-only file system it cannot, and fails to open the database at
all. So while the SuperLink runs (both files exist) the database is opened `mode=ro` (SQLite then
reads the -shm without writing it when it may not); when they are missing (the SuperLink is
stopped, everything is checkpointed into the database file) it is opened `immutable=1`, which
creates nothing and takes no lock. A locked database is waited for facts.FEDERATION_METRICS_DB_TIMEOUT
seconds. A missing, corrupt, locked or foreign database, or unreadable records, give
scrape_success 0 (and no other series of the tenancy) and one line on stderr.

Exit codes: 0 written, scrape_success 1; 3 written, scrape_success 0 (the reason on stderr; the
timer's unit counts it as success: the metric carries it); 1 the metrics file could not be
written; 2 bad arguments. A module of nina (nina.host): standard library and nina.facts only.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import stat
import sys
import time
import urllib.parse
from dataclasses import dataclass

from nina import facts
from nina.host import metrics, trust
from nina.host.failure import sayer

PROG = "nina-federation-metrics"
SLUG_RE = re.compile(facts.SLUG_PATTERN)
RECORD_SUFFIX = ".node_id"
# flwr 1.31's run statuses (flwr.common.constant.Status, SubStatus), always written, 0 or not.
RUN_STATUSES = ("pending", "starting", "running", "finished:completed", "finished:failed", "finished:stopped")
# A finished run whose sub_status is none of flwr's: one series, however many such values the
# state holds (it is the superlink user's, whom researchers' ServerApps run as).
OTHER = "finished:other"
FAILED = "finished:failed"
SQLITE_HEADER = b"SQLite format 3\x00"

say = sayer(PROG)


class ScrapeError(Exception):
    """Why the state could not be read, in one line."""


@dataclass(frozen=True)
class State:
    nodes: dict[int, bool]  # registered node id (as flwr prints it, unsigned) -> online now
    runs: dict[str, int]  # status -> how many runs


def unsigned(node_id: int) -> int:
    """flwr stores 64-bit ids as signed integers (uint64_to_int64); its CLI prints them unsigned."""
    return node_id + (1 << 64) if node_id < 0 else node_id


def _connect(db: str, timeout: float) -> sqlite3.Connection:
    try:
        st = os.lstat(db)
    except FileNotFoundError:
        raise ScrapeError(f"no state database at {db} (has the SuperLink ever started?)") from None
    except OSError as exc:
        raise ScrapeError(f"cannot read the state database {db}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ScrapeError(f"{db} is not a regular file (a link or something else): not read")
    try:
        fd = os.open(db, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        raise ScrapeError(f"cannot read the state database {db}: {exc.strerror}") from None
    if len(header) < 100 or not header.startswith(SQLITE_HEADER):
        raise ScrapeError(f"{db} is not an SQLite database (corrupt or truncated: {len(header)} bytes of header)")
    wal = header[18] == 2  # the file format's write version: 2 is WAL (flwr's journal_mode)
    quiet = wal and not (os.path.exists(f"{db}-wal") and os.path.exists(f"{db}-shm"))
    uri = f"file:{urllib.parse.quote(db)}?mode=ro" + ("&immutable=1" if quiet else "")
    try:
        return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error as exc:
        raise ScrapeError(f"cannot open the state database {db}: {exc}") from None


def read_state(db: str, timeout: float, now: float) -> State:
    con = _connect(db, timeout)
    try:
        con.execute("BEGIN")  # one read transaction: nodes and runs from the same snapshot
        nodes = {
            unsigned(int(node_id)): status == "online" and online_until is not None and float(online_until) > now
            for node_id, status, online_until in con.execute(
                "SELECT node_id, status, online_until FROM node WHERE status != 'unregistered'"
            )
        }
        runs = dict.fromkeys(RUN_STATUSES, 0)
        rows = con.execute(
            "SELECT t.starting_at, t.running_at, t.finished_at, t.sub_status FROM run AS r JOIN task AS t ON t.task_id = r.primary_task_id"
        )
        for starting_at, running_at, finished_at, sub_status in rows:
            if finished_at:
                status = f"finished:{sub_status}"
                if status not in RUN_STATUSES:
                    status = OTHER
            elif running_at:
                status = "running"
            elif starting_at:
                status = "starting"
            else:
                status = "pending"
            runs[status] = runs.get(status, 0) + 1
        con.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise ScrapeError(f"the state database {db} is locked (still busy after {timeout:g} s): {text}") from None
        if "no such table" in text or "no such column" in text:
            raise ScrapeError(f"{db} is not a state database of flwr {facts.FLWR_VERSION} ({text})") from None
        raise ScrapeError(f"cannot read the state database {db}: {text}") from None
    except sqlite3.DatabaseError as exc:
        raise ScrapeError(f"the state database {db} is corrupt: {exc}") from None
    finally:
        con.close()
    return State(nodes, runs)


def read_members(members_dir: str) -> dict[str, int | None]:
    """slug -> node id of nina-membership's records (None where a record is unreadable); {} without records."""
    try:
        fd = trust.open_dir(members_dir, strict=False)
    except FileNotFoundError:
        return {}
    except trust.Untrusted as exc:
        raise ScrapeError(f"the membership records are not to be relied on: {exc}") from None
    except OSError as exc:
        raise ScrapeError(f"cannot read the membership records in {members_dir}: {exc.strerror}") from None
    out: dict[str, int | None] = {}
    try:
        for name in sorted(os.listdir(fd)):
            slug = name.removesuffix(RECORD_SUFFIX)
            if slug == name or not SLUG_RE.match(slug):
                continue
            try:
                rfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
                with open(rfd, "rb") as fh:
                    text = fh.read(64).decode("ascii", "replace").strip()
            except OSError:
                text = ""
            out[slug] = int(text) if text.isdigit() else None
    finally:
        os.close(fd)
    return out


def families(tenancy: str, now: float, state: State | None, members: dict[str, int | None]) -> list[metrics.Family]:
    t = {"tenancy": tenancy}
    success = metrics.Family(
        "nina_federation_scrape_success", "gauge", "1 if the SuperLink's state database was read, 0 if not (see the timer's journal)"
    )
    stamp = metrics.Family("nina_federation_scrape_timestamp_seconds", "gauge", "When nina-federation-metrics last ran (Unix time)")
    registered = metrics.Family("nina_federation_supernodes_registered", "gauge", "SuperNodes whose key is registered at the SuperLink")
    online = metrics.Family(
        "nina_federation_supernodes_online", "gauge", "Registered SuperNodes online now (status online and heartbeat deadline not passed)"
    )
    per_org = metrics.Family(
        "nina_federation_supernode_online",
        "gauge",
        "1 if the organisation's registered SuperNode is online now, 0 if not (or not registered)",
    )
    runs = metrics.Family(
        "nina_federation_runs_total", "untyped", "Runs in the SuperLink's state by status (the finished:* series and the sum only grow)"
    )
    failed = metrics.Family("nina_federation_runs_failed_total", "counter", "Runs whose status is finished:failed")
    success.add(1 if state is not None else 0, **t)
    stamp.add(round(now, 3))
    if state is not None:
        registered.add(len(state.nodes), **t)
        online.add(sum(state.nodes.values()), **t)
        for slug, node_id in sorted(members.items()):
            per_org.add(1 if node_id is not None and state.nodes.get(node_id, False) else 0, tenancy=tenancy, organisation=slug)
        extra = [OTHER] if state.runs.get(OTHER) else []
        for status in (*RUN_STATUSES, *extra):
            runs.add(state.runs.get(status, 0), tenancy=tenancy, status=status)
        failed.add(state.runs.get(FAILED, 0), **t)
    return [success, stamp, registered, online, per_org, runs, failed]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="The federation's health as node exporter textfile metrics.")
    parser.add_argument("--tenancy", required=True, help="the tenancy this SuperLink serves (its label on every series)")
    parser.add_argument("--state-db", default=facts.SUPERLINK_STATE_DB, help="the SuperLink's state database (read only)")
    parser.add_argument("--members-dir", default=facts.SUPERLINK_MEMBERS_DIR, help="nina-membership's records")
    parser.add_argument("--textfile-dir", default=facts.NODE_EXPORTER_TEXTFILE_DIR, help="node exporter's textfile directory")
    parser.add_argument("--stdout", action="store_true", help="print the metrics instead of writing the file")
    args = parser.parse_args(argv)
    if not SLUG_RE.match(args.tenancy):
        say(f"error: --tenancy {args.tenancy!r} is not a tenancy name (lower-case letters, digits and dashes)")
        return 2
    now = time.time()
    state: State | None = None
    members: dict[str, int | None] = {}
    problem = ""
    try:
        members = read_members(args.members_dir)
        state = read_state(args.state_db, facts.FEDERATION_METRICS_DB_TIMEOUT, now)
    except ScrapeError as exc:
        problem = str(exc)
    except Exception as exc:  # whatever else the database holds: one line, never a traceback
        problem = f"unexpected content in {args.state_db}: {type(exc).__name__}: {exc}"
    text = metrics.exposition(families(args.tenancy, now, state, members))
    target = os.path.join(args.textfile_dir, facts.FEDERATION_METRICS_FILE)
    if args.stdout:
        sys.stdout.write(text)
    else:
        try:
            metrics.write(args.textfile_dir, facts.FEDERATION_METRICS_FILE, text)
        except (OSError, trust.Untrusted) as exc:
            say(f"error: cannot write {target}: {exc}")
            return 1
    if problem:
        say(f"error: {problem}; reported as nina_federation_scrape_success 0")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
