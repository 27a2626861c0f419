"""The lab's scenario catalogue: one entry per fault kind, with defaults that fit the demo
shop and an explanation in plain words.

Each entry says what the fault is, how it happens in real systems, what it does to a
service like the shop, how to detect it, how to repair it and how to prevent it, and what
to try in the lab. The facts behind the text are on the kinds' pages in ``docs/faults/``;
the defaults are checked by a test that starts and reverts every scenario on a real shop
database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from dbchaos import errors


class Group(StrEnum):
    LONG_TRANSACTIONS = "long-transactions"
    FAILED_MIGRATIONS = "failed-migrations"


GROUP_TITLES: Mapping[Group, str] = MappingProxyType(
    {
        Group.LONG_TRANSACTIONS: "Long transactions",
        Group.FAILED_MIGRATIONS: "Failed migrations",
    }
)

GROUP_INTROS: Mapping[Group, str] = MappingProxyType(
    {
        Group.LONG_TRANSACTIONS: (
            "A transaction that holds a lock, a snapshot or a connection for too long. The database is fine; "
            "the service around it hangs, queues up and runs out of connections. Run these against live traffic "
            "and compare the naive and hardened shop."
        ),
        Group.FAILED_MIGRATIONS: (
            "The states a botched deploy leaves behind: a version table that lies about the schema, an object "
            "that is missing or already there, a migration stuck on a lock. The shop mostly keeps serving; the "
            "next deploy is what breaks. Start one, press Deploy, read what Alembic says, then repair it."
        ),
    }
)


@dataclass(frozen=True)
class Scenario:
    kind: str
    group: Group
    title: str
    params: Mapping[str, Any]
    duration_s: float
    what: str
    real_world: str
    impact: str
    detect: str
    repair: str
    prevent: str
    in_the_lab: str

    @property
    def id(self) -> str:
        return self.kind

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "group": self.group.value,
            "title": self.title,
            "params": _plain(self.params),
            "duration_s": self.duration_s,
            "text": {
                "what": self.what,
                "real_world": self.real_world,
                "impact": self.impact,
                "detect": self.detect,
                "repair": self.repair,
                "prevent": self.prevent,
                "in_the_lab": self.in_the_lab,
            },
            "docs": f"docs/faults/{self.kind}.md",
        }


def _plain(value: Any) -> Any:
    """Read-only mappings and tuples of the catalogue as plain JSON values (fresh copies)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _p(**params: Any) -> Mapping[str, Any]:
    return MappingProxyType(params)


SCENARIOS: tuple[Scenario, ...] = (
    # ------------------------------------------------------------------ long transactions
    Scenario(
        kind="table-lock",
        group=Group.LONG_TRANSACTIONS,
        title="A table lock held in an open transaction",
        params=_p(tables=("items",), mode="ACCESS EXCLUSIVE"),
        duration_s=30,
        what=(
            "A session runs LOCK TABLE items IN ACCESS EXCLUSIVE MODE inside a transaction and keeps the "
            "transaction open. ACCESS EXCLUSIVE conflicts with every other lock mode, so every statement that "
            "touches items waits, plain SELECTs included."
        ),
        real_world=(
            "An ALTER TABLE or TRUNCATE that got its lock and then waited on something else; a maintenance script "
            "that locked a table and stalled; a console left open after BEGIN and a LOCK. Weaker modes come from "
            "everyday DDL: CREATE INDEX holds SHARE (writes wait), REFRESH MATERIALIZED VIEW CONCURRENTLY holds "
            "EXCLUSIVE."
        ),
        impact=(
            "Without timeouts every request that touches items hangs while holding a pooled connection. At 20 "
            "requests a second the pool (5 + 10 overflow) is gone within a second; then even requests that never "
            "touch items wait for a connection and fail with 'QueuePool limit of size 5 overflow 10 reached' "
            "after pool_timeout. With lock_timeout the blocked queries give up after 500 ms with SQLSTATE 55P03, "
            "the service answers 503 at once and every other endpoint keeps working."
        ),
        detect=(
            "pg_stat_activity shows sessions with wait_event_type = 'Lock' whose pg_blocking_pids() all point to "
            "one session; pg_locks shows its AccessExclusiveLock on items granted and the waiters' requests not "
            "granted. On the service: p95 latency jumps, requests in flight climb, throughput falls to zero."
        ),
        repair=(
            "Find the root of the lock tree, the session that blocks others and waits on nobody, and end its "
            "transaction: pg_cancel_backend(pid) if it is running a statement, pg_terminate_backend(pid) if it sits "
            "idle in transaction. The queue drains at once."
        ),
        prevent=(
            "Set lock_timeout and statement_timeout for the application's role or pool; turn lock and pool errors "
            "into quick 503s with Retry-After; keep pool_timeout short; give migrations and scripts a lock_timeout "
            "and let them retry."
        ),
        in_the_lab=(
            "Start it on the naive shop: in-flight requests climb, throughput drops to zero, QueuePool errors "
            "arrive after 5 s. Switch to hardened and start it again: fast 503s on items, customers' orders keep "
            "answering, and everything recovers the moment the lock goes."
        ),
    ),
    Scenario(
        kind="row-lock",
        group=Group.LONG_TRANSACTIONS,
        title="Hot rows locked by a transaction that went idle",
        params=_p(table="items", strength="FOR UPDATE", limit=10),
        duration_s=30,
        what=(
            "A session runs SELECT ... FOR UPDATE on the ten best-selling items (ids 1 to 10, the first ten by "
            "primary key) and leaves its transaction open. Only those rows are locked, and reads are never "
            "blocked by row locks."
        ),
        real_world=(
            "A request handler that locks a row and then calls a slow payment API before committing; a worker that "
            "waits on a queue inside its transaction; a batch job that crashed while its connection stayed open."
        ),
        impact=(
            "Every order in the lab's traffic contains a best-seller, so every POST /orders waits on the UPDATE of "
            "its stock. Naive: the waiting orders keep their pooled connections until the pool runs dry and "
            "unrelated requests fail with QueuePool errors. Hardened: orders fail after lock_timeout (55P03, "
            "answered with 503) and every read keeps working."
        ),
        detect=(
            "Waiters show wait_event 'transactionid' or 'tuple' in pg_stat_activity. pg_locks shows the holder with "
            "only a RowShareLock on items and its own transactionid: row locks live in the rows, not in pg_locks. "
            "SELECT * FROM pgrowlocks('items') lists the locked rows (the extension is installed in the lab)."
        ),
        repair=(
            "End the idle holder with pg_terminate_backend(pid): its transaction rolls back, the rows are free, and "
            "the waiting updates go through."
        ),
        prevent=(
            "No network calls inside a transaction; idle_in_transaction_session_timeout for the application's "
            "role; lock_timeout; lock rows in one consistent order (the shop sorts order lines by item id) to avoid "
            "deadlocks; SKIP LOCKED for job queues."
        ),
        in_the_lab=(
            "Watch the endpoint breakdown: POST /orders fails first, then, on the naive shop, everything else. The "
            "lock panel shows one idle session at the root with the orders waiting under it."
        ),
    ),
    Scenario(
        kind="advisory-lock",
        group=Group.LONG_TRANSACTIONS,
        title="An advisory lock nobody releases",
        params=_p(keys=(42,)),
        duration_s=30,
        what=(
            "A session takes pg_advisory_lock(42) and keeps its connection. Advisory locks are numbers the "
            "application chooses; they lock no table or row, only the idea the number stands for."
        ),
        real_world=(
            "A scheduler's leader election, a 'run this job once' guard, a migration runner's lock (Rails takes one "
            "before migrating), held by a process that hung but kept its connection open."
        ),
        impact=(
            "Only code that asks for the same key in the same database notices. pg_advisory_lock waits (forever, "
            "without lock_timeout); pg_try_advisory_lock returns false, so the job is skipped, quietly, every time. "
            "The shop takes no advisory locks: its traffic stays green while a job somewhere never runs."
        ),
        detect=(
            "pg_locks rows with locktype = 'advisory' (a bigint key shows split into classid and objid) and the pid "
            "holding them; waiters have wait_event = 'advisory'. Alert on jobs that have not run, not only on jobs "
            "that failed."
        ),
        repair=(
            "Find the holder in pg_locks and end its session with pg_terminate_backend: session-level advisory "
            "locks are released when the session ends."
        ),
        prevent=(
            "Prefer transaction-level advisory locks (pg_advisory_xact_lock), which end with the transaction; bound "
            "waits with lock_timeout; log and alert when pg_try_advisory_lock keeps saying no."
        ),
        in_the_lab=(
            "Connect with psql (the command is in the status bar) and run SELECT pg_try_advisory_lock(42): it says "
            "f. Run SET lock_timeout = '2s'; SELECT pg_advisory_lock(42) to see 55P03, or without the timeout to "
            "appear in the lock tree as a waiter."
        ),
    ),
    Scenario(
        kind="idle-transaction",
        group=Group.LONG_TRANSACTIONS,
        title="A transaction left idle in transaction",
        params=_p(tables=("items",), isolation="REPEATABLE READ"),
        duration_s=60,
        what=(
            "A session opens a REPEATABLE READ transaction, reads items and then does nothing. It holds ACCESS "
            "SHARE on items and a snapshot (backend_xmin) for as long as it sits there."
        ),
        real_world=(
            "A handler that returns early without commit or rollback; an ORM session kept open across a slow call; "
            "a psql session with BEGIN typed in and forgotten over lunch."
        ),
        impact=(
            "Reads and writes run normally, which is why it goes unnoticed. Anything that needs ACCESS EXCLUSIVE on "
            "items (an ALTER TABLE in a migration, TRUNCATE, VACUUM FULL) waits for it, and every later query on "
            "items queues behind that waiting statement. Meanwhile vacuum cannot remove rows changed after the "
            "snapshot was taken, in any table of the database, so tables bloat."
        ),
        detect=(
            "pg_stat_activity rows with state 'idle in transaction' and an old xact_start; age(backend_xmin) "
            "growing. Alert on the oldest transaction's age, not only on slow queries."
        ),
        repair="pg_terminate_backend(pid) on the idle session; its transaction rolls back and releases everything.",
        prevent=(
            "idle_in_transaction_session_timeout for the application's roles (the hardened shop uses 5 s); "
            "transactions that always end in a finally block or a context manager; monitoring of transaction age."
        ),
        in_the_lab=(
            "The charts stay flat; that is the lesson. Find the session in the lock panel's idle-in-transaction "
            "list, then try migration-lock-queue to see what happens when a migration arrives."
        ),
    ),
    Scenario(
        kind="connection-exhaustion",
        group=Group.LONG_TRANSACTIONS,
        title="Every connection slot taken",
        params=_p(leave=0),
        duration_s=30,
        what=(
            "dbchaos opens idle sessions until the server's ordinary connection slots (max_connections minus the "
            "reserved ones) are all in use. It hits the whole server, every database on it, not just the shop."
        ),
        real_world=(
            "A deploy that doubled the number of pods, each with its own pool; a connection leak; a batch job "
            "without a pool; a failover after which every client reconnects at once."
        ),
        impact=(
            "Connections that are already open keep working, so a warm pool sees nothing. Whatever needs a new "
            "connection fails with SQLSTATE 53300 (too many connections): pool growth under load, a restarted "
            "service, a new worker, a cron job, the migration of the next deploy. The shop connects as an ordinary "
            "role and is refused; superusers still get in through the reserved slots."
        ),
        detect=(
            "count(*) in pg_stat_activity next to max_connections, grouped by application_name and client_addr to "
            "find who holds them; 53300 in the application's logs; 'sorry, too many clients already' or "
            "'remaining connection slots are reserved' in PostgreSQL's log."
        ),
        repair=(
            "Find the client that holds the connections and stop or restart it; end its sessions with "
            "pg_terminate_backend if it cannot be reached."
        ),
        prevent=(
            "Keep pods × pool size under max_connections; put PgBouncer in front; set a CONNECTION LIMIT per role; "
            "never run services as a superuser; make start-up retry with backoff instead of crashing in a loop."
        ),
        in_the_lab=(
            "Start it and watch: nothing happens while the shop's pool is warm. Press Deploy: the migration cannot "
            "connect and the deploy stops before restarting the shop."
        ),
    ),
    # ------------------------------------------------------------------ failed migrations
    Scenario(
        kind="migration-lock-queue",
        group=Group.FAILED_MIGRATIONS,
        title="One idle read, one waiting ALTER TABLE, a full outage",
        params=_p(table="items"),
        duration_s=30,
        what=(
            "Two sessions: a reader that read items and went idle in transaction (holding only ACCESS SHARE), and a "
            "pretend migration whose LOCK TABLE items IN ACCESS EXCLUSIVE MODE waits behind the reader. Nothing is "
            "altered."
        ),
        real_world=(
            "A report job opens a transaction and sits in it. The deploy runs ALTER TABLE items ADD COLUMN, which "
            "needs ACCESS EXCLUSIVE and waits for the report. PostgreSQL grants locks in order, so every later "
            "query on items queues behind the waiting ALTER."
        ),
        impact=(
            "Every new query on items waits, plain SELECTs included, although nobody holds more than a read. Naive: "
            "the pool fills with stuck requests and every endpoint fails with QueuePool errors. Hardened: queries "
            "on items fail in 500 ms with 55P03 and the rest of the shop keeps serving."
        ),
        detect=(
            "A two-level lock tree: many sessions waiting on one session that waits for an AccessExclusiveLock, "
            "which in turn waits on a session that is 'idle in transaction'."
        ),
        repair=(
            "End the idle reader (pg_terminate_backend): the migration gets its lock and finishes, and the queue "
            "drains. Or cancel the migration (pg_cancel_backend) and retry it later."
        ),
        prevent=(
            "Run migrations with SET lock_timeout = '2s' and retry with backoff: the app then sees a two-second "
            "hiccup instead of an outage. Add idle_in_transaction_session_timeout for the application's roles."
        ),
        in_the_lab=(
            "On the naive shop, watch the whole service go down from one idle read. Open the lock panel and end the "
            "idle reader at the root of the tree (not the waiting migration): the fault ends 'lost' and traffic "
            "recovers."
        ),
    ),
    Scenario(
        kind="locked-version-table",
        group=Group.FAILED_MIGRATIONS,
        title="A deploy stuck on the version table",
        params=_p(mode="ACCESS EXCLUSIVE"),
        duration_s=30,
        what="A session holds ACCESS EXCLUSIVE on alembic_version inside an open transaction.",
        real_world=(
            "An earlier migration run that hung half-way (waiting on a lock, or a human at a prompt) and still "
            "holds the version table; two pipelines deploying the same database at once."
        ),
        impact=(
            "alembic current and alembic upgrade head hang: Alembic sets no timeout of its own, so they wait until "
            "the lock goes or the pipeline's timeout kills them. The shop itself keeps serving."
        ),
        detect=(
            "The deploy's session waits in pg_stat_activity with pg_blocking_pids() pointing at the holder; "
            "pg_locks shows the requests on alembic_version not granted. The migration panel says 'locked'."
        ),
        repair="End the holder with pg_terminate_backend, or wait for it; then run the deploy again.",
        prevent=(
            "A lock_timeout for migrations (PGOPTIONS='-c lock_timeout=5s', or SET in env.py), a timeout on the "
            "deploy step, and one deploy at a time per database."
        ),
        in_the_lab=(
            "Press Deploy while it runs: alembic waits on the lock and finishes once the fault ends (the lab kills a "
            "deploy after 60 s)."
        ),
    ),
    Scenario(
        kind="unknown-revision",
        group=Group.FAILED_MIGRATIONS,
        title="The version table names a revision that exists nowhere",
        params=_p(),
        duration_s=120,
        what="alembic_version holds an id that is in none of the shop's migration scripts.",
        real_world=(
            "Someone edited alembic_version by hand; a deploy from a branch whose migration was later deleted or "
            "squashed; a database restored next to the wrong code."
        ),
        impact=(
            "The shop keeps serving, since its tables are untouched. Every Alembic command fails: alembic current "
            "and alembic upgrade head exit with \"Can't locate revision identified by '...'\". The pipeline stops "
            "before migrating, so the next release cannot ship."
        ),
        detect=(
            "SELECT version_num FROM alembic_version and look for it in alembic history. The migration panel says "
            "'unknown revision' and names the fault that set it."
        ),
        repair=(
            "If the schema matches the code's head: alembic stamp --purge head (plain stamp head fails, since it "
            "reads the unknown id first). Otherwise find the code that has that revision."
        ),
        prevent=(
            "Never edit alembic_version by hand; never delete or rewrite a migration that ran anywhere; check in "
            "CI, before deploying, that the database's revision is one the code knows."
        ),
        in_the_lab=(
            "Start it, press Deploy and read Alembic's answer. Repair with 'alembic stamp --purge head': dbchaos "
            "sees your repair when the fault ends, keeps it and marks the fault 'superseded'."
        ),
    ),
    Scenario(
        kind="future-revision",
        group=Group.FAILED_MIGRATIONS,
        title="The database is ahead of the deployed code",
        params=_p(),
        duration_s=120,
        what="alembic_version holds an id shaped like the shop's own, from a release the deployed code does not have.",
        real_world=(
            "A newer release migrated the database, then the code was rolled back; two services share one "
            "database and the other one deployed first."
        ),
        impact=(
            'The same message as an unknown revision: Alembic commands fail with "Can\'t locate revision" and the '
            "pipeline stops. The shop runs as long as the newer schema is compatible with the older code."
        ),
        detect=(
            "The stored id is not in alembic history, but looks like your ids; the deploy log shows a rollback. "
            "The migration panel says 'unknown revision'."
        ),
        repair=(
            "Roll forward to the release that has that revision (the honest fix). Only if the schema really is "
            "what this code expects: alembic stamp --purge head."
        ),
        prevent=(
            "Expand-and-contract migrations that keep the previous release working, so a rollback never needs a "
            "downgrade; roll back code, not schema."
        ),
        in_the_lab="Start it, press Deploy, then repair by stamping (the lab has no newer release to roll forward to).",
    ),
    Scenario(
        kind="behind",
        group=Group.FAILED_MIGRATIONS,
        title="The version table says older than the schema is",
        params=_p(steps=1),
        duration_s=120,
        what=(
            "alembic_version holds the previous revision while the schema already has the last migration "
            "(orders.request_id and its index)."
        ),
        real_world=(
            "A version table restored from an old backup; a mistaken alembic stamp to an older revision; a "
            "migration applied by hand and never stamped."
        ),
        impact=(
            "alembic current prints the older revision and exits 0: nothing looks wrong. alembic upgrade head "
            're-runs the last migration and fails with DuplicateColumn (column "request_id" of relation '
            '"orders" already exists). The upgrade rolls back and the deploy stops.'
        ),
        detect=(
            "A duplicate-object error from an upgrade (42701, 42P07 or 42710). The migration panel says 'behind by "
            "1' and lists the revision an upgrade would re-run."
        ),
        repair=(
            "The schema already has the change, so record that: alembic stamp head. Running the upgrade again is "
            "exactly the mistake this drill is about."
        ),
        prevent=(
            "Schema changes only through migrations; backups and restores that keep alembic_version consistent "
            "with the schema; a CI check that compares the database with the models (alembic check)."
        ),
        in_the_lab="Press Deploy and read the DuplicateColumn error; repair with 'alembic stamp --purge head'.",
    ),
    Scenario(
        kind="missing-version",
        group=Group.FAILED_MIGRATIONS,
        title="The version table is empty",
        params=_p(),
        duration_s=120,
        what="Every row of alembic_version is deleted; the table itself stays.",
        real_world=(
            "A restore of the schema without its data; a TRUNCATE or DELETE meant for another database; a pipeline "
            "step that 'resets' the version table."
        ),
        impact=(
            "alembic current prints nothing and exits 0. alembic upgrade head replays from the first migration "
            'and fails at once with DuplicateTable (relation "customers" already exists). It all rolls back, and '
            "every retry fails the same way. The shop keeps serving."
        ),
        detect="SELECT count(*) FROM alembic_version returns 0; the migration panel says 'empty version table'.",
        repair=(
            "alembic stamp head if the schema is at head; otherwise stamp the revision the schema matches, then "
            "upgrade."
        ),
        prevent=(
            "Only the migration role may write alembic_version; backups and restores that include it; a deploy "
            "step that refuses to run when the version table is empty but the schema is not."
        ),
        in_the_lab="Press Deploy to see the replay fail on customers; repair with 'alembic stamp --purge head'.",
    ),
    Scenario(
        kind="missing-table",
        group=Group.FAILED_MIGRATIONS,
        title="The version table is gone",
        params=_p(),
        duration_s=120,
        what="alembic_version is renamed out of the way (dbchaos never drops it; it comes back when the fault ends).",
        real_world=(
            "A restore or schema copy that left the table out; a clean-up script that removed tables it did not "
            "recognise; a changed version_table setting in one of several alembic.ini files."
        ),
        impact=(
            "alembic current prints nothing. alembic upgrade head creates the table, replays from the base, fails "
            "with DuplicateTable on customers and rolls back everything, including the table it just created. "
            "Only alembic stamp recreates it."
        ),
        detect=("to_regclass('public.alembic_version') is NULL; the migration panel says 'version table missing'."),
        repair=(
            "alembic stamp head: it creates the table and records the head. dbchaos then ends the fault "
            "'superseded' and drops its hidden copy after recording that copy's rows in its journal."
        ),
        prevent=(
            "Keep the version table's name in one place; include it in backups and schema copies; restrict DROP "
            "and RENAME to the migration role."
        ),
        in_the_lab="Press Deploy to watch the replay fail; repair with 'alembic stamp --purge head'.",
    ),
    Scenario(
        kind="multiple-heads",
        group=Group.FAILED_MIGRATIONS,
        title="Two revisions in the version table",
        params=_p(variant="overlap"),
        duration_s=120,
        what="A second row joins the head in alembic_version: the head's parent.",
        real_world="A half-failed stamp, a hand-written INSERT, or two deploys of the same database racing each other.",
        impact=(
            'alembic current prints only the head, so it looks fine. alembic upgrade head fails: "Requested '
            'revision ... overlaps with other requested revisions ...". The shop keeps serving.'
        ),
        detect=(
            "More than one row in alembic_version on a project with a single line of history; the migration panel "
            "says 'overlapping revisions'."
        ),
        repair="alembic stamp --purge head replaces every row with the head.",
        prevent=(
            "One deploy at a time per database (a lock around the migration step); never insert into "
            "alembic_version by hand."
        ),
        in_the_lab="Press Deploy to read the 'overlaps' error; repair with 'alembic stamp --purge head'.",
    ),
    Scenario(
        kind="hidden-object",
        group=Group.FAILED_MIGRATIONS,
        title="Code deployed ahead of its migration",
        params=_p(table="items", column="description"),
        duration_s=60,
        what=(
            "items.description is renamed out of the way. The code expects the column, the schema does not have "
            "it, and Alembic still says the database is at head."
        ),
        real_world=(
            "The release that reads a new column rolled out before its migration ran, or after the migration "
            "failed; a manual rename on the production database."
        ),
        impact=(
            "GET /items/{id} selects every column of items and fails with UndefinedColumn (42703), a 500 in both "
            "modes; GET /items names its columns, does not need the description, and keeps working. A partial "
            "outage that a health check on one endpoint does not see."
        ),
        detect=(
            "42703 or 42P01 errors in the service while alembic current says head; a schema diff against the "
            "models (alembic check) shows what is missing."
        ),
        repair="Run the missing migration, or roll the code back to the release that matches the schema.",
        prevent=(
            "Migrate before rolling out, and write new code so that it tolerates the old schema for one release "
            "(expand and contract); alembic check in CI."
        ),
        in_the_lab=(
            "Watch the endpoint breakdown: only GET /items/{id} fails, and hardened mode does not help, because "
            "this is no timeout. Stop the fault to repair."
        ),
    ),
    Scenario(
        kind="conflicting-object",
        group=Group.FAILED_MIGRATIONS,
        title="The object a migration creates is already there",
        params=_p(object="index", table="order_lines", index="ix_order_lines_item_id", columns=("item_id",)),
        duration_s=120,
        what="dbchaos creates the index ix_order_lines_item_id by hand, before any migration does.",
        real_world=(
            "A DBA fixed a slow query in production with CREATE INDEX; a CREATE INDEX CONCURRENTLY that ran outside "
            "the migration's transaction; a migration run against the wrong database."
        ),
        impact=(
            "The migration that creates the same index fails with DuplicateTable (relation "
            '"ix_order_lines_item_id" already exists: an index is a relation), the upgrade rolls back and the '
            "deploy stops. The shop is at head and no pending migration of its own creates this index, so here "
            "the deploy passes; in your project, pair it with a database one revision behind."
        ),
        detect=(
            "The failing migration's DuplicateTable or DuplicateColumn error; \\d order_lines in psql; the index's "
            "comment names the dbchaos fault that created it."
        ),
        repair=(
            "If the object is exactly what the migration creates, drop it and run the migration; if the migration "
            "must not run again, stamp past it. Do not edit the migration to skip the step silently."
        ),
        prevent=(
            "Every schema change goes through a migration, hot fixes included (write the migration afterwards and "
            "stamp); put CREATE INDEX CONCURRENTLY in its own migration and check for INVALID leftovers."
        ),
        in_the_lab="Start it and look at \\d order_lines in psql; stop it and the index is gone again.",
    ),
)


def by_kind(kind: str) -> Scenario:
    for scenario in SCENARIOS:
        if scenario.kind == kind:
            return scenario
    raise errors.NotFound(f"no scenario for the kind {kind!r}", code="unknown_scenario")


def catalogue() -> dict[str, Any]:
    """The catalogue for the API: groups in order, each with its scenarios."""
    return {
        "groups": [
            {
                "id": group.value,
                "title": GROUP_TITLES[group],
                "intro": GROUP_INTROS[group],
                "scenarios": [s.as_dict() for s in SCENARIOS if s.group is group],
            }
            for group in Group
        ]
    }
