"""Settings for the portal, read from the environment.

Nothing set means the embedded default: SQLite, a Celery broker on the local
filesystem and the local cluster backend, so `make run` works on a bare machine.
Every variable is documented in `.env.example`.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from gpupaas.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value not in (None, "") else default


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    # Embedded default: a per-checkout key kept under var/, so sessions survive restarts
    # without a secret ever being committed.
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        from django.core.management.utils import get_random_secret_key

        key_file.write_text(get_random_secret_key())
        key_file.chmod(0o600)
    SECRET_KEY = key_file.read_text().strip()

# Earlier secret keys, still accepted for what they signed (sessions, password-reset links)
# while a new SECRET_KEY takes over (docs/operations.md, "Rotating secrets").
SECRET_KEY_FALLBACKS = env_list("SECRET_KEY_FALLBACKS")
# Encrypts kubeconfigs and credentials stored in the database; defaults to SECRET_KEY.
FIELD_ENCRYPTION_KEY = env_str("FIELD_ENCRYPTION_KEY", SECRET_KEY)
# Earlier encryption keys, still read; `manage.py rotate_secrets` re-encrypts everything with
# FIELD_ENCRYPTION_KEY, after which they can go. Where FIELD_ENCRYPTION_KEY is unset (it is
# SECRET_KEY), the SECRET_KEY_FALLBACKS.
FIELD_ENCRYPTION_KEY_FALLBACKS = env_list("FIELD_ENCRYPTION_KEY_FALLBACKS") or (
    [] if env_str("FIELD_ENCRYPTION_KEY") else SECRET_KEY_FALLBACKS)

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_NAME = env_str("SITE_NAME", "GPU Portal")

INSTALLED_APPS = [
    "portal.admin_site.PortalAdminConfig",  # django.contrib.admin, its home grouped by task
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "allauth.mfa",
    "portal",
    "workspaces",
    "clusters",
    "instances",
    "notebooks",
    "access",
    "ninja",  # the JSON API's OpenAPI document and interactive docs (static files)
    "api",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Refusals made before an API endpoint runs (405, 413) as problem documents.
    "api.middleware.ApiProblemsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "portal.middleware.HtmxRedirectMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every page needs a login unless its view says otherwise (allauth's views do).
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "portal.middleware.IdleTimeoutMiddleware",
    "portal.middleware.RoleRequiredMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]
if env_bool("QUERY_COUNT_HEADER", False):
    # Benchmarks read the number of SQL queries a page ran from a response header.
    MIDDLEWARE.insert(0, "portal.middleware.QueryCountHeaderMiddleware")
# First of all: /healthz, /readyz and /metrics before any session, host check or redirect;
# every other request gets its request id, log context and metrics (portal.ops).
MIDDLEWARE.insert(0, "portal.ops.OpsMiddleware")

ROOT_URLCONF = "gpupaas.urls"
WSGI_APPLICATION = "gpupaas.wsgi.application"
ASGI_APPLICATION = "gpupaas.asgi.application"

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
                "portal.context_processors.site",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'portal.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 10)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        # Web, worker and beat share one file: WAL lets readers run beside the writer and
        # IMMEDIATE transactions stand in for the row locks SQLite does not have.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
elif DATABASE_POOL_SIZE > 0:
    # Served over ASGI, Django's sync code runs on WEB_THREADS threads per process, and
    # Channels' consumers on threads of their own: persistent connections would be one per
    # thread (with a thread per request, 100 launches at once ran PostgreSQL out of
    # connections). A bounded pool per process shares them; a request waits for a free one.
    # Each connection is checked as the pool hands it out (CONN_HEALTH_CHECKS: one round
    # trip): after PostgreSQL restarts, the dead ones are replaced instead of failing a
    # request each (bench/chaos.py).
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1, "max_size": DATABASE_POOL_SIZE,
        "timeout": env_int("DATABASE_POOL_TIMEOUT_S", 30),
    }
# Threads per web process for Django's sync code (gpupaas.asgi.DjangoThreads): requests
# beyond them wait in the event loop (a page is a few milliseconds of CPU: more threads than
# cores only take turns). A gunicorn worker opens a pooled connection for each at start
# (gpupaas/gunicorn.py). 0: a new thread per request, as Django does by itself.
WEB_THREADS = min(env_int("WEB_THREADS", 2), DATABASE_POOL_SIZE)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
LOGIN_URL = "account_login"
LOGIN_URL_PATH = "/accounts/login/"
LOGIN_REDIRECT_URL = "portal:landing"
ACCOUNT_LOGOUT_REDIRECT_URL = "account_login"
ACCOUNT_LOGIN_METHODS = {"username", "email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "username*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_ADAPTER = "portal.adapters.AccountAdapter"
ACCOUNT_SESSION_REMEMBER = None
SOCIALACCOUNT_ADAPTER = "portal.sso.SocialAccountAdapter"
SOCIALACCOUNT_AUTO_SIGNUP = True
# The portal's own sign-in page already decided to go to the IdP: no second confirmation.
SOCIALACCOUNT_LOGIN_ON_GET = True
SOCIALACCOUNT_STORE_TOKENS = False

# --- Single sign-on (OpenID Connect) ------------------------------------------------------
OIDC_ISSUER_URL = env_str("OIDC_ISSUER_URL")
OIDC_CLIENT_ID = env_str("OIDC_CLIENT_ID")
OIDC_CLIENT_SECRET = env_str("OIDC_CLIENT_SECRET")
OIDC_PROVIDER_NAME = env_str("OIDC_PROVIDER_NAME", "Single sign-on")
OIDC_PROVIDER_ID = env_str("OIDC_PROVIDER_ID", "sso")
OIDC_SCOPES = env_list("OIDC_SCOPES", "openid,email,profile")
OIDC_GROUPS_CLAIM = env_str("OIDC_GROUPS_CLAIM", "groups")
# Refuse sign-ins whose email the IdP does not assert as verified.
OIDC_REQUIRE_VERIFIED_EMAIL = env_bool("OIDC_REQUIRE_VERIFIED_EMAIL", True)
# Sign an IdP user into an existing portal account with the same, IdP-verified email.
OIDC_LINK_BY_VERIFIED_EMAIL = env_bool("OIDC_LINK_BY_VERIFIED_EMAIL", False)
# Linking is done by portal.sso (never to an administrator's account, never wiping a
# password), not by allauth's email authentication.
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False
# A second factor for password accounts (guests, and administrators' break-glass path):
# an authenticator app (TOTP), with recovery codes.
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = SITE_NAME
# Password sign-in: the administrators' break-glass path when an IdP is configured.
PASSWORD_LOGIN_ENABLED = env_bool("PASSWORD_LOGIN_ENABLED", True)
SOCIALACCOUNT_PROVIDERS = {
    "openid_connect": {
        "provider_class": "portal.sso.PortalOpenIDConnectProvider",
        "OAUTH_PKCE_ENABLED": True,
        "SCOPE": OIDC_SCOPES,
        "APPS": [
            {
                "provider_id": OIDC_PROVIDER_ID,
                "name": OIDC_PROVIDER_NAME,
                "client_id": OIDC_CLIENT_ID,
                "secret": OIDC_CLIENT_SECRET,
                "settings": {"server_url": OIDC_ISSUER_URL},
            }
        ] if OIDC_ISSUER_URL else [],
    }
}

# --- Sessions -----------------------------------------------------------------------------
SESSION_IDLE_TIMEOUT_S = env_int("SESSION_IDLE_TIMEOUT_S", 8 * 3600)
SESSION_COOKIE_AGE = env_int("SESSION_MAX_AGE_S", 7 * 24 * 3600)
SESSION_COOKIE_HTTPONLY = True
# Sessions are read from the cache (Redis in production) and written through to the
# database: a page costs no session query, and a cache restart signs nobody out.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
SESSION_COOKIE_SAMESITE = "Lax"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise expects it, even when empty
# The embedded default serves static files straight from the source folders; the production
# image runs collectstatic and serves the hashed, compressed copies.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# --- Email (invitations) ------------------------------------------------------------------
# Production: an SMTP relay (EMAIL_HOST). Embedded default: each mail is a file under
# var/mail, where the person who ran `make run` reads it (runportal prints the path).
EMAIL_HOST = env_str("EMAIL_HOST")
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", EMAIL_PORT == 587)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT_S", 10)
EMAIL_FILE_PATH = Path(env_str("EMAIL_FILE_PATH") or VAR_DIR / "mail").resolve()
EMAIL_BACKEND = env_str("EMAIL_BACKEND") or (
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST
    else "django.core.mail.backends.filebased.EmailBackend"
)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "portal@localhost")
# The portal's public address, for links in mail (e.g. https://gpu.example.com). Unset: the
# address the inviting request came to.
PORTAL_URL = env_str("PORTAL_URL").rstrip("/")

SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY") else None
)
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# Production behind TLS: redirect plain HTTP and pin HTTPS in browsers.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0

# --- Celery -------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    # A broker that needs no server: messages are files under var/broker, shared by web,
    # worker and beat on one machine.
    _broker_dir = VAR_DIR / "broker"
    for sub in ("queue", "processed", "control"):
        (_broker_dir / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        # Its exchange tables; kombu's default is ./control, in whatever folder it started.
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        # How often web, worker and beat look for messages: kombu's 1 s is up to a second
        # before a worker even sees a deploy.
        "polling_interval": 0.1,
    }
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", "gpupaas")
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# The worker logs in the portal's format (LOGGING below), with the request ids.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
RECONCILE_INTERVAL_S = env_int("RECONCILE_INTERVAL_S", 30)
# Periodic jobs live here, in one place.
# Idle stop (a compute profile's policy): how often instances are looked at, and how long
# before stopping one its owner is warned.
IDLE_CHECK_S = env_int("IDLE_CHECK_S", 60)
IDLE_WARNING_MINUTES = env_int("IDLE_WARNING_MINUTES", 5)
CELERY_BEAT_SCHEDULE = {
    "reconcile-instances": {
        "task": "instances.tasks.reconcile_instances",
        "schedule": float(RECONCILE_INTERVAL_S),
    },
    "remote-access-sweep": {
        "task": "access.tasks.sweep_remote_access",
        "schedule": float(RECONCILE_INTERVAL_S),
    },
    "reconcile-notebooks": {
        "task": "notebooks.tasks.reconcile_notebooks",
        "schedule": float(RECONCILE_INTERVAL_S),
    },
    "idle-stop": {
        "task": "notebooks.tasks.check_idle",
        "schedule": float(IDLE_CHECK_S),
    },
    "budget-warnings": {
        "task": "instances.tasks.warn_budgets",
        "schedule": float(RECONCILE_INTERVAL_S),
    },
    "api-token-sweep": {
        "task": "api.tasks.sweep_api_tokens",
        "schedule": float(RECONCILE_INTERVAL_S),
    },
}

# --- Sign-in hardening (issue 8): ID tokens, shared cache, login limits, headers -----------
# ID token verification (portal.idtoken): clock skew allowed on exp/iat/nbf, how long the
# issuer's keys are cached (an unknown key id refetches them), and whether HS256/384/512
# keyed with the client secret is accepted (off: anyone holding the secret could forge).
OIDC_CLOCK_SKEW_S = env_int("OIDC_CLOCK_SKEW_S", 60)
OIDC_JWKS_CACHE_S = env_int("OIDC_JWKS_CACHE_S", 3600)
# A signature the cached key does not verify fetches the JWKS again, at most this often.
OIDC_JWKS_REFETCH_S = env_int("OIDC_JWKS_REFETCH_S", 30)
OIDC_ALLOW_HMAC = env_bool("OIDC_ALLOW_HMAC", False)
OIDC_HTTP_TIMEOUT_S = float(env_str("OIDC_HTTP_TIMEOUT_S") or "10")
# The cache holds login rate-limit counters and the IdP's signing keys, so every web process
# must see the same one: Redis in production (CACHE_URL, else the Celery broker when that is
# Redis), files under var/ in the embedded default.
CACHE_URL = env_str("CACHE_URL") or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else "")
CACHES = {"default": {
    "BACKEND": "gpupaas.cache.RedisCache" if CACHE_URL
    else "django.core.cache.backends.filebased.FileBasedCache",
    "LOCATION": CACHE_URL or str(VAR_DIR / "cache"),
    "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "gpupaas"),
}}
# Failed password sign-ins are limited per account and per client address; the address is
# the one the last TRUSTED_PROXY_COUNT proxies saw (X-Forwarded-For), not the proxy's own,
# so one user's failures do not lock out everyone behind the same proxy.
# (workspaces.services.client_ip, also used by portal.adapters for allauth's limits)
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 1 if env_bool("BEHIND_TLS_PROXY") else 0)
LOGIN_FAILURES_PER_ACCOUNT = env_int("LOGIN_FAILURES_PER_ACCOUNT", 5)  # per 5 minutes
LOGIN_FAILURES_PER_IP = env_int("LOGIN_FAILURES_PER_IP", 20)  # per minute
ACCOUNT_RATE_LIMITS = {
    "login_failed": f"{LOGIN_FAILURES_PER_IP}/m/ip,{LOGIN_FAILURES_PER_ACCOUNT}/300s/key",
}
# Headers (portal.middleware.SecurityHeadersMiddleware). No inline script anywhere: htmx is
# told not to inject its indicator style (base.html), and scripts live in static/js.
CONTENT_SECURITY_POLICY = env_str("CONTENT_SECURITY_POLICY") or "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
    "connect-src 'self'", "font-src 'self'", "object-src 'none'", "base-uri 'self'",
    "frame-ancestors 'none'",
])
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"
MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
                  "portal.middleware.SecurityHeadersMiddleware")
# Cookies are Secure whenever the portal is served over HTTPS.
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = (
    SESSION_COOKIE_SECURE or SECURE_SSL_REDIRECT or SECURE_PROXY_SSL_HEADER is not None
    or SECURE_HSTS_SECONDS > 0)

# --- Portal -------------------------------------------------------------------------------
DEFAULT_MAX_GPUS = env_int("DEFAULT_MAX_GPUS", 8)
DEFAULT_MAX_INSTANCES = env_int("DEFAULT_MAX_INSTANCES", 5)
# An instance in pending/provisioning/deleting longer than this is re-driven by reconcile.
RECONCILE_STUCK_AFTER_S = env_int("RECONCILE_STUCK_AFTER_S", 60)
# An instance on a cluster that the database does not know is quarantined (stopped, kept,
# listed for administrators) and deleted only after this many days, or by an administrator.
ORPHAN_GRACE_DAYS = env_int("ORPHAN_GRACE_DAYS", 7)
# A pass that finds more unknown instances than ORPHAN_HOLD_COUNT, or than this fraction of
# the instances it knows where that is larger, quarantines none of them and raises the alarm:
# a restore gone wrong or a wrong DATABASE_URL, not strays.
ORPHAN_HOLD_COUNT = env_int("ORPHAN_HOLD_COUNT", 20)
ORPHAN_HOLD_FRACTION = env_float("ORPHAN_HOLD_FRACTION", 0.1)
# Polling of a resource on its way up or down backs off exponentially from the first delay
# to the cap (seconds), for as long as it takes. A task chain holds a lease of the next delay
# plus POLL_LEASE_GRACE_S; reconcile re-drives a stuck row only once its lease ran out.
INSTANCE_POLL_S = float(env_str("INSTANCE_POLL_S", "5"))
INSTANCE_POLL_MAX_S = float(env_str("INSTANCE_POLL_MAX_S", "60"))
NOTEBOOK_POLL_S = float(env_str("NOTEBOOK_POLL_S", "1"))
NOTEBOOK_POLL_MAX_S = float(env_str("NOTEBOOK_POLL_MAX_S", "10"))
# A local server that has started is looked at by its worker this often, for this long,
# before the backed-off polls take over: seen running within a fraction of a second.
FAST_POLL_INTERVAL_S = float(env_str("FAST_POLL_INTERVAL_S", "0.2"))
FAST_POLL_S = float(env_str("FAST_POLL_S", "30"))
POLL_LEASE_GRACE_S = float(env_str("POLL_LEASE_GRACE_S", "150"))
# A notebook not reachable this long after it was created is failed (image pulls can be slow).
NOTEBOOK_DEPLOY_TIMEOUT_S = env_int("NOTEBOOK_DEPLOY_TIMEOUT_S", 900)
INSTANCES_PER_PAGE = env_int("INSTANCES_PER_PAGE", 20)
# Collaborators: people (invited or accepted) one instance may be shared with, and how long
# an invitation link stays valid.
COLLABORATORS_PER_INSTANCE = env_int("COLLABORATORS_PER_INSTANCE", 20)
INVITATION_TTL_DAYS = env_int("INVITATION_TTL_DAYS", 7)
# Catalogue services each get an origin of their own: s<id>-<suffix>.<APPS_DOMAIN>, served by
# the portal's web server. `localhost` works on this machine (browsers resolve *.localhost
# here); to serve a team, point a wildcard DNS name (and certificate) at the portal.
APPS_DOMAIN = env_str("APPS_DOMAIN", "localhost")
# How long a service's access decision may be reused (a revocation shows within this), and
# the share of its requests logged (who, service, path).
APPS_DECISION_CACHE_S = env_float("APPS_DECISION_CACHE_S", 1.0)
APPS_REQUEST_LOG_RATE = env_float("APPS_REQUEST_LOG_RATE", 1.0)
# Keys to API services (vLLM): how long one lives, and how many live ones a user may hold
# per service.
SERVICE_KEY_DAYS = env_int("SERVICE_KEY_DAYS", 90)
SERVICE_KEYS_PER_USER = env_int("SERVICE_KEYS_PER_USER", 10)
# Invitation mails (invites and resends) one person may send in an hour.
INVITATION_MAILS_PER_HOUR = env_int("INVITATION_MAILS_PER_HOUR", 50)
# People outside the identity provider may set up a guest account from an invitation link
# (a password; they see only what is shared with them). Optionally only for these domains.
GUEST_ACCOUNTS_ENABLED = env_bool("GUEST_ACCOUNTS_ENABLED", True)
GUEST_EMAIL_DOMAINS = [d.lower().lstrip("@") for d in env_list("GUEST_EMAIL_DOMAINS")]
# The most a guest may get on an instance shared with them: "manage" (as invited) or "use"
# (an invitation to manage gives a guest use only: no deleting, no sharing further).
GUEST_MAX_ACCESS = env_str("GUEST_MAX_ACCESS", "manage")
if GUEST_MAX_ACCESS not in ("manage", "use"):
    raise ImproperlyConfigured(f"GUEST_MAX_ACCESS is {GUEST_MAX_ACCESS!r}: use manage or use.")

# Local backend: where instance sandboxes live, and how many simulated GPU slots a machine
# without NVIDIA GPUs offers.
LOCAL_SANDBOX_ROOT = Path(env_str("LOCAL_SANDBOX_ROOT", str(VAR_DIR / "sandboxes")))
LOCAL_GPU_SLOTS = env_int("LOCAL_GPU_SLOTS", 8)
LOCAL_USE_NVML = env_bool("LOCAL_USE_NVML", True)
# Who local notebooks run as: "auto" gives every workspace its own OS user when the portal
# runs as root (as The Littlest JupyterHub does) and is single-user mode otherwise; "users"
# insists on OS users; "single-user" runs them as the portal's own user.
LOCAL_ISOLATION = env_str("LOCAL_ISOLATION", "auto")
# The workspace's OS user is this prefix plus the workspace id (e.g. gpw-12).
LOCAL_USER_PREFIX = env_str("LOCAL_USER_PREFIX", "gpw-")
# Single-user mode serves local notebooks to one workspace at a time, unless shared.
LOCAL_SINGLE_USER_SHARED = env_bool("LOCAL_SINGLE_USER_SHARED", False)
# Each local notebook and sandbox shell in cgroups of its own (memory, CPU, processes, GPU
# devices) with a private /tmp, where the portal runs as root (clusters/backends/local/
# limits.py); the most tasks (processes and threads) one may hold.
LOCAL_LIMITS = env_bool("LOCAL_LIMITS", True)
LOCAL_TASKS_MAX = env_int("LOCAL_TASKS_MAX", 512)
# Notebook environments (one per profile and package list, built with uv) and the Python
# they are built on (empty: the portal's own, if tenants may run it, else python3).
LOCAL_ENV_ROOT = Path(env_str("LOCAL_ENV_ROOT", str(VAR_DIR / "envs")))
LOCAL_ENV_PYTHON = env_str("LOCAL_ENV_PYTHON", "")

# Kubernetes backend: the portal's own name on shared clusters (orphan cleanup only touches
# objects carrying it), client pacing and retries, and what instances run.
PORTAL_ID = env_str("PORTAL_ID", "gpupaas")
KUBE_QPS = float(env_str("KUBE_QPS", "20"))
KUBE_BURST = env_int("KUBE_BURST", 40)
KUBE_REQUEST_TIMEOUT_S = float(env_str("KUBE_REQUEST_TIMEOUT_S", "10"))
KUBE_RETRIES = env_int("KUBE_RETRIES", 4)
KUBE_RETRY_BASE_S = float(env_str("KUBE_RETRY_BASE_S", "0.5"))
# `vcluster` profiles: the pinned vcluster chart (installed by Flux) and its control plane
# image; whether the portal reaches each virtual cluster's API through the ingress
# controller (a portal outside the cluster) instead of its Service; the namespace the portal
# runs in when its credential does not say (NetworkPolicies let it in from there).
VCLUSTER_CHART_VERSION = env_str("VCLUSTER_CHART_VERSION", "0.20.6")
VCLUSTER_CHART_REPOSITORY = env_str("VCLUSTER_CHART_REPOSITORY", "https://charts.loft.sh")
VCLUSTER_IMAGE = env_str("VCLUSTER_IMAGE", "ghcr.io/loft-sh/vcluster-oss:0.20.6")
VCLUSTER_API_VIA_INGRESS = env_bool("VCLUSTER_API_VIA_INGRESS", False)
PORTAL_NAMESPACE = env_str("PORTAL_NAMESPACE", "gpupaas-system")
# Where Flux's helm-controller runs: let in to each virtual cluster's API too, since it
# installs catalogue services inside with the kubeconfig vcluster exported.
FLUX_NAMESPACE = env_str("FLUX_NAMESPACE", "flux-system")
# `dedicated` profiles: the add-ons every Cluster API cluster gets (CAAPH HelmChartProxies).
GPU_OPERATOR_CHART_VERSION = env_str("GPU_OPERATOR_CHART_VERSION", "v25.3.4")
INGRESS_NGINX_CHART_VERSION = env_str("INGRESS_NGINX_CHART_VERSION", "4.12.1")
# How long a virtual or dedicated cluster may take to be ready before it is failed, with the
# controllers' last words (chart install, machines, GPU nodes).
VCLUSTER_READY_TIMEOUT_S = env_int("VCLUSTER_READY_TIMEOUT_S", 900)
DEDICATED_READY_TIMEOUT_S = env_int("DEDICATED_READY_TIMEOUT_S", 2700)
# The Kubernetes proxy reads a dedicated cluster's kubeconfig again after this long (Cluster
# API rotates it; the portal keeps no copy).
DEDICATED_CREDENTIALS_TTL_S = env_int("DEDICATED_CREDENTIALS_TTL_S", 60)
# Whether an administrator's pasted kubeconfig may run an exec credential plugin (EKS, GKE,
# OIDC login helpers) on the portal's machine. Kubeconfigs read from clusters never may.
KUBECONFIG_EXEC_ALLOWED = env_bool("KUBECONFIG_EXEC_ALLOWED", False)

# Remote access: the tokens of downloaded kubeconfigs (hours; users pick up to the maximum),
# how often the Kubernetes proxy re-checks a long request such as a watch, and how long its
# audit trail is kept.
ACCESS_TOKEN_TTL_HOURS = float(env_str("ACCESS_TOKEN_TTL_HOURS", "8"))
ACCESS_TOKEN_MAX_TTL_HOURS = float(env_str("ACCESS_TOKEN_MAX_TTL_HOURS", "24"))
# A PEM file with the CA of the portal's own HTTPS certificate, for portals behind a private
# CA: downloaded kubeconfigs then carry it (kubectl sends tokens over HTTPS only).
ACCESS_KUBECONFIG_CA_FILE = env_str("ACCESS_KUBECONFIG_CA_FILE")
ACCESS_RECHECK_S = float(env_str("ACCESS_RECHECK_S", "1"))
ACCESS_AUDIT_RETENTION_DAYS = env_int("ACCESS_AUDIT_RETENTION_DAYS", 90)

# Browser shells (access.consumers): when they close (no keystroke for SHELL_IDLE_TIMEOUT_S,
# or SHELL_MAX_SESSION_S in all). On Kubernetes instances a shell is a pod in the instance
# (access/shellpod.py): SHELL_IMAGE unless the cluster names one, its limits, how long it
# may take to start, and the portal's address as the pod reaches it (SHELL_PORTAL_URL, else
# PORTAL_URL, else the address the browser used). Local sandbox shells run on this machine:
# at most SHELL_MAX_SESSIONS at once, SHELL_PER_USER per person.
SHELL_IDLE_TIMEOUT_S = env_int("SHELL_IDLE_TIMEOUT_S", 15 * 60)
SHELL_MAX_SESSION_S = env_int("SHELL_MAX_SESSION_S", 8 * 3600)
SHELL_IMAGE = env_str("SHELL_IMAGE", "docker.io/alpine/k8s:1.32.4")
SHELL_CPU_LIMIT = env_str("SHELL_CPU_LIMIT", "1")
SHELL_MEMORY_LIMIT = env_str("SHELL_MEMORY_LIMIT", "1Gi")
SHELL_START_TIMEOUT_S = env_int("SHELL_START_TIMEOUT_S", 180)
SHELL_PORTAL_URL = env_str("SHELL_PORTAL_URL").rstrip("/")
SHELL_MAX_SESSIONS = env_int("SHELL_MAX_SESSIONS", 32)
SHELL_PER_USER = env_int("SHELL_PER_USER", 4)
# Django Channels carries the shells' WebSockets; its layer tells open shells that access
# changed. Redis where there is one; in memory in the embedded default (a single process).
CHANNEL_LAYER_URL = env_str("CHANNEL_LAYER_URL") or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else "")
CHANNEL_LAYERS = {"default": {
    "BACKEND": "channels_redis.core.RedisChannelLayer",
    # The layer blocks up to 5 s on Redis per receive: the client's read timeout (5 s by
    # default in redis-py 8) must be longer.
    "CONFIG": {"hosts": [{"address": CHANNEL_LAYER_URL, "socket_timeout": 30}],
               "prefix": env_str("CACHE_KEY_PREFIX", "gpupaas") + ":channels"},
} if CHANNEL_LAYER_URL else {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Operations: logs, metrics ----------------------------------------------------------
# json: one object a line (production); text: readable lines (`make run` sets it). Every line
# carries the request id, user id and instance id where known (gpupaas.logs).
LOG_FORMAT = env_str("LOG_FORMAT", "json")
LOGGING = logging_config(log_format=LOG_FORMAT, level=env_str("LOG_LEVEL", "INFO"))
# /metrics (Prometheus) answers a bearer token equal to METRICS_TOKEN, or a direct peer (not
# through a proxy) in one of METRICS_ALLOWED_NETWORKS; with neither set it is off (404).
METRICS_TOKEN = env_str("METRICS_TOKEN")
METRICS_ALLOWED_NETWORKS = env_list("METRICS_ALLOWED_NETWORKS")
# A cluster's GPU inventory is asked at most this often (seconds) for the metrics.
METRICS_INVENTORY_MAX_AGE_S = float(env_str("METRICS_INVENTORY_MAX_AGE_S", "30"))
# The Celery worker's own /metrics port (task durations and failures); 0: none.
WORKER_METRICS_PORT = env_int("WORKER_METRICS_PORT", 0)

# JSON API (api/): personal access tokens expire after at most API_TOKEN_MAX_DAYS (users pick,
# the default is offered), and each token (or browser session) may send API_RATE_LIMIT
# requests (count/s|m|h|d, counted in the shared cache; empty: no limit).
API_TOKEN_MAX_DAYS = env_int("API_TOKEN_MAX_DAYS", 365)
API_TOKEN_DEFAULT_DAYS = env_int("API_TOKEN_DEFAULT_DAYS", 30)
API_RATE_LIMIT = env_str("API_RATE_LIMIT", "600/m")
# A user's tokens together (users make tokens themselves, so a budget per token alone would
# not bound them), and refused tokens per client address (guessing is slowed to this).
API_USER_RATE_LIMIT = env_str("API_USER_RATE_LIMIT", "1200/m")
API_INVALID_TOKEN_LIMIT = env_str("API_INVALID_TOKEN_LIMIT", "30/10m")
