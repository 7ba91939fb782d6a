"""The embedded set-up's files under var/: made by the entry points, never by importing settings.

manage.py, wsgi.py and the Celery worker call prepare() before anything runs, so that a single machine
needs no configuration (SQLite, the filesystem broker, local media, a development secret key), while
importing the settings, in a test, a build step or a production image, leaves the disk as it was.
Reads only the environment: settings import this module.
"""

import os
import secrets
from pathlib import Path

from marketplace.env import env_bool

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY_FILE = "secret_key"
# Each folder is needed only while its environment variable is unset (the embedded default): a production
# image, configured for PostgreSQL, Redis and S3, gets no var/ at all. kombu's filesystem broker does not
# create its folders and fails on the first message without them.
_FOLDERS = {
    "DATABASE_URL": ("",),
    "MEDIA_S3_BUCKET": ("media",),
    "CACHE_URL": ("cache",),
    "CELERY_BROKER_URL": ("celery/queue", "celery/processed", "celery/control"),
}


def var_dir() -> Path:
    return Path(os.environ.get("VAR_DIR") or BASE_DIR / "var")


def read_secret_key() -> str:
    try:
        return (var_dir() / SECRET_KEY_FILE).read_text().strip()
    except FileNotFoundError:
        return ""


def prepare() -> None:
    """Create var/'s folders and, for a development set-up without SECRET_KEY, the key file (mode 0600)."""
    root = var_dir()
    for variable, folders in _FOLDERS.items():
        value = os.environ.get(variable, "")
        if value and not value.startswith("filesystem://"):
            continue  # a filesystem broker configured by hand still keeps its folders here, as settings say
        for folder in folders:
            (root / folder).mkdir(parents=True, exist_ok=True)
    if os.environ.get("SECRET_KEY") or not env_bool("DEBUG", True):
        return  # without DEBUG the settings demand SECRET_KEY
    root.mkdir(parents=True, exist_ok=True)
    path = root / SECRET_KEY_FILE
    if path.exists():
        return
    # Written aside, then linked into place: a process starting beside this one (web and worker) reads
    # either no key or the whole key, and os.link refuses to replace a key another process put there first.
    draft = root / f".{SECRET_KEY_FILE}.{os.getpid()}"
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as key_file:
        key_file.write(secrets.token_urlsafe(50))
    try:
        os.link(draft, path)
    except FileExistsError:
        pass
    finally:
        draft.unlink()
