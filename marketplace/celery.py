import os
import sys

from celery import Celery

from marketplace import local_state
from marketplace.core import observability

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
# `celery -A marketplace worker|beat` is an entry point like manage.py and wsgi.py. Importing this module
# anywhere else (Django importing the package: the web, manage.py) prepares nothing.
_program = sys.argv[0] if sys.argv else ""
if os.path.basename(_program) == "celery" or _program.endswith(os.path.join("celery", "__main__.py")):
    # The embedded set-up's folders and shared secret key must exist before the settings read them.
    local_state.prepare()
    # Before anything imports prometheus_client: a worker's pool processes share their metrics through files.
    observability.prepare_worker_metrics()
# Request ids into and out of task messages, task metrics, the worker's logging and its metrics port.
observability.connect_celery_signals()

app = Celery("marketplace")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
