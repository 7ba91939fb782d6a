"""Settings for the marketplace, driven only by environment variables.

Defaults give the embedded set-up (SQLite, media on local disk, Celery's filesystem
broker, all under var/); production sets DATABASE_URL, CELERY_BROKER_URL, SECRET_KEY,
ALLOWED_HOSTS and the storage variables (see README).
"""

import ipaddress
import os
from pathlib import Path

import dj_database_url
from csp import constants as csp_constants
from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key
from kombu import Exchange, Queue

from marketplace import local_state
from marketplace.env import env_bool, env_choice, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
# Importing settings writes nothing: the entry points (manage.py, wsgi.py, the Celery worker) create
# var/'s folders and the development secret key through marketplace.local_state.prepare().
VAR_DIR = local_state.var_dir()

DEBUG = env_bool("DEBUG", True)

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is false")
    # The key kept in var/ (made by the entry points), shared by the web server and the worker. A process
    # started before it exists gets a key of its own: sessions and signed links then last as long as it.
    SECRET_KEY = local_state.read_secret_key() or get_random_secret_key()

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000")
SITE_NAME = env_str("SITE_NAME", "Creator Dataset Marketplace")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "axes",
    "csp",
    "marketplace.core",
    "marketplace.accounts",
    "marketplace.catalog",
    "marketplace.curation",
    "marketplace.packs",
    "marketplace.commerce",
    "marketplace.royalties",
    "training",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",  # first: times everything below
    "marketplace.core.observability.RequestIdMiddleware",
    # /healthz, /readyz, /metrics: before the host check and the HTTPS redirect (probes call the pod's IP).
    "marketplace.core.middleware.OperationsEndpointsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "marketplace.core.middleware.NulInQueryMiddleware",  # %00 in a query string: a 400, not a database error
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "marketplace.core.csp.ContentSecurityPolicyMiddleware",
    # After everything that can log in: turns a lock-out noticed during the request into its answer.
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",  # last
]

ROOT_URLCONF = "marketplace.urls"
WSGI_APPLICATION = "marketplace.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
# django-axes first: it refuses a locked-out log-in before any password is checked (see accounts/lockout.py).
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "core:home"
LOGOUT_REDIRECT_URL = "core:home"

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
                "marketplace.core.context_processors.site",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker write concurrently: WAL lets readers go on while one
    # writes, and IMMEDIATE transactions wait for the lock instead of failing mid-way.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests use a file too (one per test process): an in-memory database is one connection
    # shared by every thread, which breaks the live server's parallel requests.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
else:
    # A server that does not answer fails a connection within seconds instead of hanging a request, a task
    # or a readiness probe's thread (libpq's default is to wait forever).
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", env_int("DB_CONNECT_TIMEOUT", 5))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (shared by all web processes; log-in lockouts live in the database) ------
CACHE_URL = env_str("CACHE_URL")
if CACHE_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# --- Files --------------------------------------------------------------------
# Media are private: no MEDIA_URL is served; views check permissions and stream files.
MEDIA_ROOT = VAR_DIR / "media"
MEDIA_S3_BUCKET = env_str("MEDIA_S3_BUCKET")
if MEDIA_S3_BUCKET:
    _media_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": MEDIA_S3_BUCKET,
            "endpoint_url": env_str("MEDIA_S3_ENDPOINT_URL") or None,
            "region_name": env_str("MEDIA_S3_REGION") or None,
            "default_acl": "private",
            "querystring_auth": True,
            "signature_version": "s3v4",
            "file_overwrite": True,
            # Keys of their own (MinIO, R2...); unset, boto3's chain applies (AWS_ACCESS_KEY_ID..., a role).
            **(
                {
                    "access_key": env_str("MEDIA_S3_ACCESS_KEY_ID"),
                    "secret_key": env_str("MEDIA_S3_SECRET_ACCESS_KEY"),
                }
                if env_str("MEDIA_S3_ACCESS_KEY_ID")
                else {}
            ),
        },
    }
else:
    _media_storage = {
        "BACKEND": "marketplace.core.storage.AtomicFileSystemStorage",
        "OPTIONS": {"location": str(MEDIA_ROOT)},
    }
# On S3, buyers' downloads and other attachments redirect to a signed URL valid this long.
DOWNLOAD_PRESIGNED_SECONDS = env_int("DOWNLOAD_PRESIGNED_SECONDS", 300)
STATIC_URL = "/static/"
# In development static files come straight from the apps; production serves collectstatic's output.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": _media_storage,
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# --- Uploads --------------------------------------------------------------------
UPLOAD_MAX_BYTES = env_int("UPLOAD_MAX_BYTES", 50_000_000)
UPLOAD_MAX_PIXELS = env_int("UPLOAD_MAX_PIXELS", 100_000_000)
UPLOAD_MIN_SHORT_SIDE = env_int("UPLOAD_MIN_SHORT_SIDE", 512)
RELEASE_MAX_BYTES = env_int("RELEASE_MAX_BYTES", 20_000_000)
THUMBNAIL_PX = env_int("THUMBNAIL_PX", 320)
PREVIEW_PX = env_int("PREVIEW_PX", 1280)
DATA_UPLOAD_MAX_NUMBER_FILES = 100

# --- Curation -------------------------------------------------------------------
# CoCa ViT-L/14 fine-tuned on MS-COCO: the best open model that both captions and embeds
# (LAION-2B contrastive training). A pretrained tag downloads on first use; offline sites
# point CURATION_CLIP_PRETRAINED at a local checkpoint file.
CURATION_CLIP_MODEL = env_str("CURATION_CLIP_MODEL", "coca_ViT-L-14")
CURATION_CLIP_PRETRAINED = env_str("CURATION_CLIP_PRETRAINED", "mscoco_finetuned_laion2b_s13b_b90k")
CURATION_DEVICE = env_str("CURATION_DEVICE", "auto")  # auto, cpu or cuda
CURATION_BATCH_SIZE = env_int("CURATION_BATCH_SIZE", 32)
# DataLoader processes decoding images while the model runs (used on CUDA; a CPU keeps its cores for torch).
CURATION_NUM_WORKERS = env_int("CURATION_NUM_WORKERS", 4)
CURATION_ANALYSE_ON_READY = env_bool("CURATION_ANALYSE_ON_READY", True)
# Uploads arrive in bursts: waiting a moment lets one task analyse them as one batch.
CURATION_BATCH_WAIT_SECONDS = env_int("CURATION_BATCH_WAIT_SECONDS", 3)
CURATION_PHASH_MAX_DISTANCE = env_int("CURATION_PHASH_MAX_DISTANCE", 8)
CURATION_MIN_COSINE = env_float("CURATION_MIN_COSINE", 0.95)
CURATION_MIN_METADATA_SCORE = env_float("CURATION_MIN_METADATA_SCORE", 0.18)

# --- Packs and downloads ---------------------------------------------------------
PACK_SHARD_MAX_BYTES = env_int("PACK_SHARD_MAX_BYTES", 1_000_000_000)  # WebDataset shard size
PACK_SHARD_MAX_ITEMS = env_int("PACK_SHARD_MAX_ITEMS", 10_000)
# Exports hash every image against its published SHA-256 while copying it. Off: only sizes are checked
# and the kernel copies the bytes (faster; for storage trusted to keep files intact).
PACK_EXPORT_VERIFY = env_bool("PACK_EXPORT_VERIFY", True)
# A signed download link is a bearer credential (scripts use it without a session), so it is short-lived: long
# enough to click through a downloads page, short enough that a leaked link (chat, history, proxy logs) soon
# dies. It is checked when a download starts, so a long download is not cut; scripts ask the API for fresh links.
DOWNLOAD_LINK_SECONDS = env_int("DOWNLOAD_LINK_SECONDS", 900)

# --- Payments ---------------------------------------------------------------------
# Chosen, never inferred: "fake" is our extended localstripe at LOCALSTRIPE_URL (the embedded set-up, tests,
# a staging site), "stripe" is Stripe itself with the platform account's keys. A site with DEBUG off must say.
PAYMENTS_MODE = env_choice("PAYMENTS_MODE", ("fake", "stripe"), default="fake" if DEBUG else None)
if PAYMENTS_MODE is None:
    raise ImproperlyConfigured(
        "PAYMENTS_MODE must be set when DEBUG is false: 'stripe' (with STRIPE_SECRET_KEY, STRIPE_PUBLISHABLE_KEY "
        "and STRIPE_WEBHOOK_SECRET) or 'fake' (the fake Stripe at LOCALSTRIPE_URL, for a staging site)"
    )
if PAYMENTS_MODE == "stripe":
    _missing = [n for n in ("STRIPE_SECRET_KEY", "STRIPE_PUBLISHABLE_KEY", "STRIPE_WEBHOOK_SECRET") if not env_str(n)]
    if _missing:
        raise ImproperlyConfigured(
            f"PAYMENTS_MODE=stripe needs {', '.join(_missing)} (the webhook secret is the endpoint's signing secret)"
        )
    STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY")
    STRIPE_PUBLISHABLE_KEY = env_str("STRIPE_PUBLISHABLE_KEY")
    STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET")
    LOCALSTRIPE_URL = ""
    STRIPE_API_BASE = env_str("STRIPE_API_BASE")  # empty: api.stripe.com
    STRIPE_JS_URL = env_str("STRIPE_JS_URL", "https://js.stripe.com/v3/")
else:
    STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "sk_test_localstripe")
    STRIPE_PUBLISHABLE_KEY = env_str("STRIPE_PUBLISHABLE_KEY", "pk_test_localstripe")
    STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "whsec_localstripe")
    if STRIPE_SECRET_KEY.startswith(("sk_live_", "rk_live_")):
        # A live key beside the fake Stripe: a set-up that believes it takes real money and does not.
        raise ImproperlyConfigured("PAYMENTS_MODE=fake was given a live STRIPE_SECRET_KEY: set PAYMENTS_MODE=stripe")
    LOCALSTRIPE_URL = env_str("LOCALSTRIPE_URL", "http://127.0.0.1:8420").rstrip("/")
    STRIPE_API_BASE = LOCALSTRIPE_URL
    STRIPE_JS_URL = f"{LOCALSTRIPE_URL}/js.stripe.com/v3/"
# Stripe Connect Express payouts to creators: off unless the platform account has Connect.
STRIPE_CONNECT_ENABLED = env_bool("STRIPE_CONNECT_ENABLED", False)

# --- Royalties ------------------------------------------------------------------------
PLATFORM_SHARE_PERCENT = env_int("PLATFORM_SHARE_PERCENT", 15)
PAYOUT_MINIMUM_CENTS = env_int("PAYOUT_MINIMUM_CENTS", 2500)

# --- Training ---------------------------------------------------------------------
# Where a worker keeps a run's cache and checkpoints while it trains. Each checkpoint is also copied to
# media storage, so a run taken over on another machine resumes from it; outputs are saved there too.
TRAINING_WORK_DIR = Path(env_str("TRAINING_WORK_DIR", str(VAR_DIR / "training")))
TRAINING_DEVICE = env_str("TRAINING_DEVICE", "auto")  # auto, cpu or cuda
# A running run's worker renews this lease; a redelivered task finding a live lease is refused.
TRAINING_LEASE_SECONDS = env_int("TRAINING_LEASE_SECONDS", 300)
# The tiny Stable Diffusion pipeline that seed_demo builds for the demo run (the "Demo" preset).
TRAINING_DEMO_BASE_MODEL = Path(env_str("TRAINING_DEMO_BASE_MODEL", str(VAR_DIR / "models" / "tiny-sd")))


def _base_model_checkpoints(name: str) -> dict[str, str]:
    """`key=checkpoint,key=checkpoint`: registry keys (training/engine/registry.py) to a hub id or a local path
    on the workers, replacing the key's default checkpoint. training/base_models.py refuses unknown keys."""
    checkpoints = {}
    for entry in env_list(name):
        key, separator, checkpoint = (part.strip() for part in entry.partition("="))
        if not separator or not key or not checkpoint:
            raise ImproperlyConfigured(f"{name}: each entry is key=hub-id-or-path, not {entry!r}")
        checkpoints[key] = checkpoint
    return checkpoints


# Operators with local copies of base models (or other hub ids): e.g. "sdxl=/models/sdxl,flux1-dev=/models/dev".
TRAINING_BASE_MODEL_CHECKPOINTS = _base_model_checkpoints("TRAINING_BASE_MODEL_CHECKPOINTS")

# --- Demo (make run) ------------------------------------------------------------
# On (make run): when the curation model's weights can be neither read locally nor downloaded, runall
# starts the web and worker with a tiny CLIP trained on the demo photos instead, and says so.
DEMO_OFFLINE_MODELS = env_bool("DEMO_OFFLINE_MODELS", False)

# --- Accounts -------------------------------------------------------------------
# Failed log-ins are counted by django-axes in the database (shared by every web process) per account and
# address, per address, and per account; marketplace/accounts/lockout.py says how each is limited and why.
LOGIN_MAX_FAILURES = env_int("LOGIN_MAX_FAILURES", 5)
LOGIN_LOCKOUT_SECONDS = env_int("LOGIN_LOCKOUT_SECONDS", 900)
# How many reverse proxies of ours (load balancer, nginx...) each request passes; each must append the address it
# received from to X-Forwarded-For. 0 (the default): the header is ignored, the connecting address is the client's.
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured("TRUSTED_PROXY_COUNT must be 0 or more")
AXES_HANDLER = "marketplace.accounts.lockout.LockoutHandler"
AXES_FAILURE_LIMIT = "marketplace.accounts.lockout.failure_limit"  # LOGIN_MAX_FAILURES, read at each attempt
AXES_COOLOFF_TIME = "marketplace.accounts.lockout.cool_off"  # LOGIN_LOCKOUT_SECONDS
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], ["ip_address"], ["username"]]
AXES_CLIENT_IP_CALLABLE = "marketplace.accounts.lockout.client_address"
AXES_USERNAME_CALLABLE = "marketplace.accounts.lockout.normalised_username"
AXES_LOCKOUT_CALLABLE = "marketplace.accounts.lockout.lockout_response"
AXES_RESET_ON_SUCCESS = True
# A locked account's lock is not prolonged by more failures: it ends LOGIN_LOCKOUT_SECONDS after it began.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Sign-up confirmation links (mailed; the account is made when its link is followed) last this long.
SIGNUP_CONFIRM_SECONDS = env_int("SIGNUP_CONFIRM_SECONDS", 3 * 24 * 3600)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Email ----------------------------------------------------------------------
EMAIL_HOST = env_str("EMAIL_HOST")
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_PORT = env_int("EMAIL_PORT", 587)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "marketplace@localhost")

# --- Celery ---------------------------------------------------------------------
WORKER_QUEUES = ("celery", "curation", "exports", "training")
# "localhost" means nothing to the filesystem transport; it only keeps kombu from warning.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://localhost//")
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(VAR_DIR / "celery/queue"),
        "data_folder_out": str(VAR_DIR / "celery/queue"),
        "processed_folder": str(VAR_DIR / "celery/processed"),
        "control_folder": str(VAR_DIR / "celery/control"),
        "store_processed": False,
    }
else:
    # Redis redelivers an unacknowledged task after this many seconds; it must outlast
    # the longest task (training runs take hours).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 12 * 3600)}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True  # tasks are idempotent: a worker lost mid-task means a redelivery
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# One queue per kind of work, so each gets workers of its own size and machine (the GPU workers take
# `training`): `celery worker -Q curation`. A worker started without -Q takes all of them (one machine).
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_QUEUES = [Queue(name, Exchange(name), routing_key=name) for name in WORKER_QUEUES]
CELERY_TASK_ROUTES = {
    "marketplace.curation.tasks.*": {"queue": "curation"},
    "marketplace.packs.tasks.*": {"queue": "exports"},
    "training.tasks.run_training": {"queue": "training"},
}
# Periodic work (run by `celery beat`; `manage.py runall` starts it inside its worker).
CELERY_BEAT_SCHEDULE = {
    "royalties-pay-out-all": {
        "task": "marketplace.royalties.tasks.pay_out_all",
        "schedule": env_int("PAYOUT_INTERVAL_SECONDS", 3600),
    },
    # Runs whose worker died (lease expired) go back to the training queue and resume from their checkpoint.
    "training-requeue-stale-runs": {
        "task": "training.tasks.requeue_stale_runs",
        "schedule": env_int("TRAINING_RECOVERY_INTERVAL_SECONDS", 60),
    },
}

# --- API ------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: unauthenticated API calls then get 401 with a WWW-Authenticate header.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "marketplace.core.pagination.StrictPageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "marketplace.core.api_schema.AutoSchema",  # adds the one error shape
    # The services' PermissionDenied and ValidationError answered with their reasons, in that shape.
    "EXCEPTION_HANDLER": "marketplace.core.api_errors.api_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Creator Dataset Marketplace API",
    "DESCRIPTION": "Creators upload licensed images and manage their metadata and consent; "
    "buyers list their pack licences and fetch signed download links.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Security ---------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL: what a Content-Security-Policy source names."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else ""


# Every page: scripts only from us and the payments provider, inline ones only with the response's nonce
# (request.csp_nonce in a template); nothing may frame us, post our forms elsewhere or change the base URL.
# marketplace/core/csp.py adds the payments origins (from the STRIPE_* settings) at each response.
# Files served to users (thumbnails, originals, exports) keep their own stricter sandboxing policy.
# Images in pages may redirect to a presigned URL of the media bucket.
if not MEDIA_S3_BUCKET:
    _MEDIA_ORIGINS = []
elif env_str("MEDIA_S3_ENDPOINT_URL"):
    _MEDIA_ORIGINS = [_origin(env_str("MEDIA_S3_ENDPOINT_URL"))]  # path-style: endpoint/bucket/key
else:
    _region = env_str("MEDIA_S3_REGION")
    _MEDIA_ORIGINS = [f"https://{MEDIA_S3_BUCKET}.s3.amazonaws.com"] + (
        [f"https://{MEDIA_S3_BUCKET}.s3.{_region}.amazonaws.com"] if _region else []
    )
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [csp_constants.SELF],
        "script-src": [csp_constants.SELF, csp_constants.NONCE],
        "style-src": [csp_constants.SELF, csp_constants.NONCE],
        "img-src": [csp_constants.SELF, "data:", *_MEDIA_ORIGINS],
        "connect-src": [csp_constants.SELF],
        "frame-src": [csp_constants.NONE],
        "object-src": [csp_constants.NONE],
        "base-uri": [csp_constants.SELF],
        "frame-ancestors": [csp_constants.NONE],
        "form-action": [csp_constants.SELF],
    },
}
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Operations -------------------------------------------------------------------
# /healthz: the process answers. /readyz: the database, broker, media storage and payments answer, each within
# this many seconds (a dependency that hangs makes it 503 in about that time).
READINESS_TIMEOUT_SECONDS = env_float("READINESS_TIMEOUT_SECONDS", 3.0)
# /metrics (Prometheus) and readiness details go to the bearer of METRICS_TOKEN and to clients in
# METRICS_ALLOWED_NETWORKS (CIDRs): loopback only when no token is set, no network when one is.
# A Celery worker serves its own metrics on CELERY_METRICS_PORT (read from the environment by the worker itself).
METRICS_TOKEN = env_str("METRICS_TOKEN")
try:
    METRICS_ALLOWED_NETWORKS = [
        str(ipaddress.ip_network(network, strict=False))
        for network in env_list("METRICS_ALLOWED_NETWORKS", [] if METRICS_TOKEN else ["127.0.0.0/8", "::1/128"])
    ]
except ValueError as _error:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {_error}") from None
# JSON lines (message, level, logger, request_id...) for log collectors; text for a developer's terminal.
LOG_FORMAT = env_choice("LOG_FORMAT", ("text", "json"), default="text" if DEBUG else "json")
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# Errors of the web and the worker to Sentry, when a DSN is given (no personal data is sent).
SENTRY_DSN = env_str("SENTRY_DSN")
SENTRY_ENVIRONMENT = env_str("SENTRY_ENVIRONMENT", "development" if DEBUG else "production")
SENTRY_RELEASE = env_str("SENTRY_RELEASE")  # empty: Sentry's own guess (SENTRY_RELEASE, the git commit)
SENTRY_TRACES_SAMPLE_RATE = env_float("SENTRY_TRACES_SAMPLE_RATE", 0.0)
if SENTRY_DSN:
    from marketplace.core.observability import init_sentry

    init_sentry(
        dsn=SENTRY_DSN,
        environment=SENTRY_ENVIRONMENT,
        release=SENTRY_RELEASE,
        traces_sample_rate=SENTRY_TRACES_SAMPLE_RATE,
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "marketplace.core.observability.RequestIdFilter"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(processName)s %(name)s [%(request_id)s] %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": ["asctime", "levelname", "name", "message", "request_id", "process"],
            "rename_fields": {"asctime": "time", "levelname": "level"},
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]},
    },
    # Django's own console handler would print django.* records a second time, unformatted.
    "loggers": {"django": {"handlers": [], "level": "INFO", "propagate": True}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}
