"""The lab's tooling, apart from the product: for the lab, the tests and the load tests only.

The stand-ins for the services the app calls (grimbots.lab.sandbox: Telegram, the PSP),
the zero-duplication audit of a load test (grimbots.lab.audit), the load test's bots
(grimbots.lab.seed) and the real servers the tests and the benchmarks start
(grimbots.lab.servers: redis-server, PostgreSQL, gunicorn, and waiting for them).
Production hosts never import it: only the CLI's lab commands (`grimbots sandbox`,
`grimbots audit`, `grimbots bots seed`) do, lazily, in their bodies (scripts/check-imports.py
fails on any other importer inside the package).
"""
