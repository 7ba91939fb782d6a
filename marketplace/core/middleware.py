from django.core.exceptions import BadRequest
from django.http import JsonResponse

from marketplace.core import views


class OperationsEndpointsMiddleware:
    """/healthz, /readyz and /metrics, answered before SecurityMiddleware and CommonMiddleware: load balancer
    probes and Prometheus call a pod by its IP (not in ALLOWED_HOSTS) over plain HTTP (no HTTPS redirect).
    These views build no URL from the Host header, so the host check has nothing to protect there; /metrics
    and readiness details check the caller themselves (views.is_operator)."""

    ROUTES = {"/healthz": views.healthz, "/readyz": views.readyz, "/metrics": views.metrics_page}

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        view = self.ROUTES.get(request.path_info)
        return view(request) if view else self.get_response(request)


class NulInQueryMiddleware:
    """A query string holding a NUL character (%00) is refused with a 400 before any view runs.

    No filter of ours has a use for one, and PostgreSQL cannot take one in a text parameter (psycopg refuses
    the query: a 500 on every list that filters by a typed value). Request bodies need no such check: the
    API's and the forms' text fields already refuse NUL characters field by field."""

    MESSAGE = "The query string holds a NUL character (%00), which no parameter accepts."

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if any("\x00" in key or "\x00" in value for key, values in request.GET.lists() for value in values):
            if request.path.startswith("/api/"):
                return JsonResponse({"detail": self.MESSAGE}, status=400)
            raise BadRequest(self.MESSAGE)
        return self.get_response(request)
