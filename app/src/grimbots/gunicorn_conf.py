"""gunicorn settings: `gunicorn -c python:grimbots.gunicorn_conf grimbots.wsgi:app`.

Command-line flags (--bind, --workers) override these. Choices, measured on the 2-core
box (docs/benchmarks.md, "Ingest (web tier)"):
- gevent: keeps client connections alive like gthread, but serves them from one event
  loop per process instead of a thread pool: about 45% more peak throughput than gthread
  and a lower tail at 1,000 req/s; the sync worker closes every connection and the
  reconnect cost capped it lowest. The webhook only waits on Redis, which gevent makes
  cooperative.
- the access log is off: a formatted line per request cost ~10% of the CPU at peak;
  HAProxy logs requests, and /metrics counts them by route and status.
"""

from __future__ import annotations

# Patch before anything else is imported: preload_app imports the app in the master, and
# locks, sockets and the database driver created before patching would block a whole
# gevent worker instead of one request. Patching here makes master and workers agree.
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

from grimbots.metrics import mark_process_dead  # noqa: E402

bind = "127.0.0.1:8000"
workers = 4
worker_class = "gevent"
worker_connections = 1000
# Settings are validated once in the master (a bad one exits 2 before any worker starts),
# and workers share the imported code. Pools are per process and built after the fork.
preload_app = True
keepalive = 75  # longer than HAProxy's idle timeout, so the proxy closes first
timeout = 30
graceful_timeout = 20
backlog = 2048
accesslog = None
errorlog = "-"
loglevel = os.environ.get("GRIMBOTS_LOG_LEVEL", "info").lower()
proc_name = "grimbots-web"
# gunicorn 23+ opens a control socket at one fixed path per user (~/.gunicorn/gunicorn.ctl),
# so two instances on a host would fight over it; systemd manages our processes instead.
control_socket_disable = True


def child_exit(server, worker) -> None:
    # Prometheus multiprocess mode: drop the dead worker's live gauges.
    mark_process_dead(worker.pid)
