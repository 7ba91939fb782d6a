import os

from django.core.wsgi import get_wsgi_application

from marketplace import local_state

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "marketplace.settings")
local_state.prepare()

application = get_wsgi_application()
