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
