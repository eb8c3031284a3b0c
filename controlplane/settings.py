"""Settings come from the environment (12-factor). With nothing set, the embedded default runs:
SQLite and the ORM broker in ./var, Envoy on 127.0.0.1:8080 in front of the MLServer replicas on
127.0.0.1:8090 and up, and the packaged MiniLM model's folder as the one allowed source root.
"""

import os
import secrets
import tempfile
from datetime import timedelta
from pathlib import Path

import dj_database_url
import psutil

from deployments.inference.packaged import packaged_model_root

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("CONTROLPLANE_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def write_secret_once(path: Path, content: str) -> None:
    """Create ``path`` holding ``content``, readable and writable by its owner alone from its first byte.

    The content goes to a temporary file in the same folder (mkstemp creates it 0600, whatever the
    umask), which is then hard-linked to ``path``: the link is atomic and fails when ``path`` exists,
    so a reader never sees a half-written file and, of two processes racing, the first one's content
    stays (the second one's link fails and it reads the first one's).
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first: its secret wins
    finally:
        os.unlink(temporary)


def secret_key_file(path: Path) -> str:
    """The secret key kept in ``path``, generated there on first use (see write_secret_once)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_secret_once(path, secrets.token_urlsafe(50))
    return path.read_text().strip()


def _secret_key() -> str:
    """SECRET_KEY from the environment; otherwise one generated once and kept in var/ (never in the code)."""
    return os.environ.get("SECRET_KEY") or secret_key_file(VAR_DIR / "secret_key")


SECRET_KEY = _secret_key()
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")

# Behind a TLS-terminating proxy or load balancer (README, "The web server, behind a proxy"). Every
# switch is off by default, so the embedded default serves plain http on 127.0.0.1; `manage.py check
# --deploy` is clean once they are on (tests/web/test_settings.py).
if env_bool("TRUST_X_FORWARDED_PROTO"):
    # Only when the proxy sets this header itself on every request (never passing the client's own).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")  # e.g. https://controlplane.example.com
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT")
# Probes of the web process may come over plain http from inside (kubelet, the load balancer).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD")
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE")
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's and ReDoc's files, served from here (the docs work offline)
    "django_q",
    "django_prometheus",
    "deployments",
]

MIDDLEWARE = [
    # django-prometheus: request counts and latencies by view; first and last so they time the whole stack.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves the collected static files (the admin's CSS) also with DEBUG=False, where runserver does not.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "controlplane.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "controlplane.wsgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'controlplane.sqlite3'}"),
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
    )
}
# django-prometheus's thin subclasses of the same backends count queries, their time and errors; the
# database is still chosen by DATABASE_URL (only the engine's module changes, its vendor stays).
METERED_DATABASE_ENGINES = {
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
}
DATABASE_VENDOR_ENGINE = DATABASES["default"]["ENGINE"]
DATABASES["default"]["ENGINE"] = METERED_DATABASE_ENGINES.get(DATABASE_VENDOR_ENGINE, DATABASE_VENDOR_ENGINE)
if DATABASE_VENDOR_ENGINE == "django.db.backends.sqlite3":
    # Workers and the web server share one SQLite file: wait for locks instead of failing at once; and
    # write-ahead logging, so a status read never waits for a worker's commit (nor a commit for a read).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )
    # A connection per request unless DATABASE_CONN_MAX_AGE says otherwise (the web server does, in
    # controlplane/gunicorn.conf.py: opening a SQLite file costs more than a status lookup).
    DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("DATABASE_CONN_MAX_AGE", "0"))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
# Times are stored in UTC and shown in this zone (an IANA name, e.g. Europe/Paris), labelled with it.
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
# The admin's dates in deployments.clock's format (Django 5 always localizes, so through a format module).
FORMAT_MODULE_PATH = ["controlplane.formats"]

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Compressed copies at collectstatic; no manifest, so pages render even before collectstatic has run.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# WhiteNoise warns on every start when STATIC_ROOT is missing (before the first collectstatic: tests,
# a fresh checkout); an empty folder is the honest state of "nothing collected yet".
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

# Request bodies larger than this are refused with a 400 before they are parsed.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("MAX_REQUEST_BYTES", 64 * 1024))


# The serving layer (deployments.inference): the fleet, its repository, the sources.
# The one address clients call: the Envoy in front of the replicas.
INFERENCE_SERVER_URL = os.environ.get("INFERENCE_SERVER_URL", "http://127.0.0.1:8080")
# The MLServer replicas behind it: INFERENCE_REPLICAS of them on 127.0.0.1:8090, 8091, ... unless listed.
INFERENCE_REPLICAS = int(os.environ.get("INFERENCE_REPLICAS", "1"))
INFERENCE_REPLICA_URLS = env_list("INFERENCE_REPLICA_URLS") or [
    f"http://127.0.0.1:{8090 + n}" for n in range(INFERENCE_REPLICAS)
]
# Envoy's admin (what it routes, its counters) and the folder of the route files it watches.
ROUTER_ADMIN_URL = os.environ.get("ROUTER_ADMIN_URL", "http://127.0.0.1:9901")
ROUTER_CONFIG_DIR = Path(os.environ.get("ROUTER_CONFIG_DIR", VAR_DIR / "envoy" / "xds"))
# After the switch, blue stays loaded this long while green is watched; a task's config.bake_seconds wins.
INFERENCE_BAKE_SECONDS = float(os.environ.get("INFERENCE_BAKE_SECONDS", "5"))
# How many replicas load a revision at the same time.
INFERENCE_LOAD_PARALLELISM = int(os.environ.get("INFERENCE_LOAD_PARALLELISM", "4"))
MODEL_REPOSITORY_ROOT = Path(os.environ.get("MODEL_REPOSITORY_ROOT", VAR_DIR / "model-repository"))
ALLOWED_SOURCE_ROOTS = [Path(p) for p in env_list("ALLOWED_SOURCE_ROOTS")] or [
    root for root in (packaged_model_root(), VAR_DIR / "sources") if root is not None
]
# MLflow sources (models:/, runs:/): the server is MLFLOW_TRACKING_URI, unless a model names its own;
# MLflow's client reads it and its credentials from the environment itself. It retries an unanswered
# call 7 times over about 4 minutes; a deploy should fail at fetch sooner, and can be retried.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
# Opt-in: POST /deploy of an unregistered MLflow run id registers it from this source first (runs:/{id}/model).
MLFLOW_RUN_SOURCE_TEMPLATE = os.environ.get("MLFLOW_RUN_SOURCE_TEMPLATE", "")
INFERENCE_READY_TIMEOUT = float(os.environ.get("INFERENCE_READY_TIMEOUT", "300"))
INFERENCE_KEEP_REVISIONS = int(os.environ.get("INFERENCE_KEEP_REVISIONS", "3"))
MAX_DEPLOYED_MODELS = int(os.environ.get("MAX_DEPLOYED_MODELS", "20"))


def detected_replica_memory(replicas: int) -> int:
    """A replica's memory budget when REPLICA_MEMORY_BYTES is unset: this machine's memory less 1 GiB for
    the system and the control plane, shared by the replicas as if they ran here (make run's do), each
    less 512 MiB for MLServer and torch before any model is loaded."""
    return max((psutil.virtual_memory().total - 2**30) // max(replicas, 1) - 2**29, 0)


# The bytes of model weights one replica may hold: a deploy whose green would not fit is refused.
REPLICA_MEMORY_BYTES = int(
    os.environ.get("REPLICA_MEMORY_BYTES") or detected_replica_memory(len(INFERENCE_REPLICA_URLS))
)

# django-q2: the ORM broker on the same database by default; Redis when REDIS_URL is set.
# django-q2 kills a job after TASK_TIMEOUT; a deploy's server calls alone may take
# deployments.inference.deploy_time_bound(INFERENCE_READY_TIMEOUT, INFERENCE_BAKE_SECONDS) (505 s by
# default), and the fetch comes on top: `manage.py check` refuses a ready timeout that does not fit.
TASK_TIMEOUT = int(os.environ.get("TASK_TIMEOUT", "1800"))
Q_CLUSTER = {
    # Tests set their own name, so their queue never mixes with a cluster an operator runs on the same Redis.
    "name": os.environ.get("Q_CLUSTER_NAME", "controlplane"),
    "workers": int(os.environ.get("Q_WORKERS", "2")),
    "timeout": TASK_TIMEOUT,
    "retry": TASK_TIMEOUT + 60,
    "max_attempts": 1,  # retries of our tasks are decided by the task engine, not by the broker
    "catch_up": False,
    "ack_failures": True,
    "save_limit": 1000,
    "poll": 0.2,
}
if REDIS_URL := os.environ.get("REDIS_URL"):
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# The task engine (deployments.services): leases, retries of lost attempts, re-sending lost hand-offs.
# A worker renews its model's lease every TASK_LEASE_SECONDS / 3 (one UPDATE). A worker whose process
# dies has its task retried by run_workers at once; a lease not renewed for TASK_LEASE_SECONDS means
# its holder is paused or gone, and run_workers (every TASK_LEASE_SECONDS / 3) or the sweeper retries
# (or fails) its task.
TASK_LEASE_SECONDS = float(os.environ.get("TASK_LEASE_SECONDS", "15"))
TASK_MAX_ATTEMPTS = int(os.environ.get("TASK_MAX_ATTEMPTS", "3"))
# A pending task not handed to the queue after this long (or handed over this long ago and never
# started) is sent again by the sweeper.
TASK_HANDOFF_GRACE_SECONDS = float(os.environ.get("TASK_HANDOFF_GRACE_SECONDS", "30"))
TASK_SWEEP_MINUTES = int(os.environ.get("TASK_SWEEP_MINUTES", "1"))
# The watchdog of `manage.py run_workers`: every WORKERS_CANARY_SECONDS it sends a canary job that its own
# cluster must run; a cluster with no canary run for 2 periods + WORKERS_CANARY_GRACE_SECONDS (15 s by
# default), and not busy with live tasks on every worker, is killed (its whole process group) and
# started again. On stop, qcluster gets WORKERS_STOP_SECONDS to finish before its group is killed.
WORKERS_CANARY_SECONDS = float(os.environ.get("WORKERS_CANARY_SECONDS", "5"))
WORKERS_CANARY_GRACE_SECONDS = float(os.environ.get("WORKERS_CANARY_GRACE_SECONDS", "5"))
WORKERS_STOP_SECONDS = float(os.environ.get("WORKERS_STOP_SECONDS", "10"))
# /readyz: the first task of a model's queue may wait this long for a worker before readiness fails;
# the inference server must answer its liveness within READY_INFERENCE_TIMEOUT seconds.
READY_MAX_PENDING_SECONDS = float(os.environ.get("READY_MAX_PENDING_SECONDS", "300"))
READY_INFERENCE_TIMEOUT = float(os.environ.get("READY_INFERENCE_TIMEOUT", "2"))
# What builds the deployer the workers drive; the default is the green deployer of deployments.inference.
INFERENCE_DEPLOYER_FACTORY = os.environ.get(
    "INFERENCE_DEPLOYER_FACTORY", "deployments.services.deployer.build_green_deployer"
)

if DATABASE_VENDOR_ENGINE == "django.db.backends.sqlite3":
    # Tests start real workers in subprocesses, so the SQLite test database must be a file they can open.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-controlplane-{os.getpid()}.sqlite3")}

REST_FRAMEWORK = {
    # Token first: a request without credentials gets 401 with "WWW-Authenticate: Token", not 403.
    # Tokens are django-rest-knox's: stored as a SHA-512 digest, with an optional expiry.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "deployments.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["deployments.api.permissions.ReadAuthenticatedWriteWithModelPermission"],
    "DEFAULT_PARSER_CLASSES": ["deployments.api.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "EXCEPTION_HANDLER": "deployments.api.exceptions.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "deployments.api.pagination.TaskCursorPagination",
    "PAGE_SIZE": 50,
}

# API tokens (`manage.py create_token USER [--expires-days N]`, or the admin's "Auth tokens"): the
# header stays `Authorization: Token <key>`. create_token's default expiry is API_TOKEN_TTL_DAYS
# (unset: never); a token added in the admin expires when its form says.
REST_KNOX = {
    "AUTH_HEADER_PREFIX": "Token",
    "TOKEN_TTL": timedelta(days=float(ttl)) if (ttl := os.environ.get("API_TOKEN_TTL_DAYS")) else None,
    "AUTO_REFRESH": False,  # a request never writes to the token's row
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Inference Deployment Tasks API",
    "DESCRIPTION": (
        "Deploy embedding models onto a V2 inference server (green strategy) and delete them again. "
        "Every deploy or delete is a task; follow it by task id or by embedding model id. "
        "Authenticate with `Authorization: Token <key>`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # /api/docs/ loads Swagger UI from our static files (drf-spectacular-sidecar), not from a CDN: the page
    # works where the control plane has no way out to the internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Logs: plain lines by default; LOG_FORMAT=json writes one JSON object per line (for a log shipper), from
# our code, Django and django-q2 alike. Lines logged while a task runs carry its task_id, embedding_model_id
# and attempt (deployments.log_context).
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text").strip().lower()
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
Q_CLUSTER["log_level"] = LOG_LEVEL  # django-q2's logger, when it sets itself up (without LOG_FORMAT=json)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "task_context": {"()": "deployments.log_context.TaskContextFilter"},
        "routine_jobs": {"()": "deployments.log_routine.RoutineJobsAtDebug"},
    },
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": ["levelname", "name", "message"],
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",  # ISO 8601, UTC
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "filters": ["task_context"]}},
    "loggers": {
        "deployments": {"handlers": ["console"], "level": LOG_LEVEL},
        # django-q2 adds its own handler (none is configured here); its lines about the canary and the sweep
        # are DEBUG (deployments.log_routine).
        "django-q": {"filters": ["routine_jobs"]},
        # A request that raised (a 500) with its traceback; Django's own handler for it prints only with DEBUG on.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
if LOG_FORMAT == "json":
    LOGGING["handlers"]["console"]["formatter"] = "json"
    # Everything through the one JSON handler: the root (Django's own loggers propagate to it) and
    # django-q2's logger, which adds a plain handler of its own only when it finds none. Django's default
    # handlers (plain text) are taken off its loggers, runserver's request lines included; a 500's
    # traceback (django.request) reaches the root through them, as exc_info.
    LOGGING["root"] = {"handlers": ["console"], "level": LOG_LEVEL}
    LOGGING["loggers"] = {
        "deployments": {"level": LOG_LEVEL},
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django.server": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        "django-q": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False, "filters": ["routine_jobs"]},
    }

# Metrics: GET /metrics in the Prometheus text format. Workers, the reconciler and the web server are
# separate processes, so prometheus_client's multiprocess mode keeps each process's counters and
# histograms in files in one folder that /metrics merges. prometheus_client reads the folder from the
# environment when it is imported (after the settings), and child processes inherit it.
# scripts/run-stack.sh empties the folder when the stack starts.
PROMETHEUS_MULTIPROC_DIR = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "prometheus")))
PROMETHEUS_MULTIPROC_DIR.mkdir(parents=True, exist_ok=True)
# Prometheus usually scrapes without credentials, and /metrics holds counts and ages, no secrets (no
# tokens, no sources, no task configs): open by default. Set METRICS_TOKEN to require
# "Authorization: Bearer <token>" where the port is reachable by more than the scraper.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
