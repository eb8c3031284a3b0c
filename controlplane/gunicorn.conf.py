"""gunicorn's settings for the control plane's web server, from the environment (`make run` and production):

    gunicorn -c controlplane/gunicorn.conf.py

WEB_ADDR         where to listen (default 127.0.0.1:8000; several addresses comma-separated)
WEB_CONCURRENCY  worker processes (default 2)
WEB_THREADS      threads per worker (default 4): a slow client holds a thread, not a whole worker
WEB_TIMEOUT      seconds a request may take before its worker is restarted (default 30)
WEB_GRACEFUL_TIMEOUT  seconds a stopped server waits for open requests and keep-alive connections (default
                 20; `make run` sets 3, so that a stack on a workstation stops at once)

Anything else gunicorn knows can be added through GUNICORN_CMD_ARGS. Static files are served by
WhiteNoise inside Django; whether a request came over https is Django's decision (settings.py:
TRUST_X_FORWARDED_PROTO), so gunicorn does not rewrite the scheme itself.
"""

import os

wsgi_app = "controlplane.wsgi:application"
bind = [address.strip() for address in os.environ.get("WEB_ADDR", "127.0.0.1:8000").split(",") if address.strip()]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
worker_class = "gthread"
timeout = int(os.environ.get("WEB_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("WEB_GRACEFUL_TIMEOUT", "20"))
keepalive = 5  # behind a proxy that keeps connections open; it should be shorter than the proxy's

# Each thread keeps its database connection between requests, on SQLite too (settings.py opens one per
# request there unless told): opening a SQLite file and reading its schema costs more than the lookup.
os.environ.setdefault("DATABASE_CONN_MAX_AGE", "60")

# One line per request on stdout, the server's own messages on stderr.
accesslog = "-"
errorlog = "-"

# gunicorn trusts X-Forwarded-Proto (and two more) from 127.0.0.1 by default and then calls the request
# https itself; off, so that one switch (TRUST_X_FORWARDED_PROTO) decides, for any proxy address.
secure_scheme_headers = {}

# gunicorn >= 25 opens a control socket at one path per user ($HOME/.gunicorn/gunicorn.ctl), which a
# second server on the machine (tests, the benchmark) would take over; nothing here uses it.
control_socket_disable = True
