"""The lab's demo service: a small shop of the kind dbchaos's users run.

FastAPI + SQLAlchemy (sync handlers, the default ``QueuePool``) + Alembic migrations, on three
related tables (``customers``, ``items``, ``orders`` with ``order_lines``). It runs in one of two
configurations so a fault shows what database hygiene buys:

* ``naive`` — what most services ship with: SQLAlchemy's default pool (5 + 10 overflow), no
  database timeouts; a blocked query waits for as long as the lock lasts, the pool fills up and
  requests fail with ``QueuePool limit ... reached`` after ``pool_timeout``;
* ``hardened`` — ``lock_timeout``, ``statement_timeout`` and ``idle_in_transaction_session_timeout``
  on every connection, a short pool timeout, and 503 + ``Retry-After`` on lock and pool errors.
"""
