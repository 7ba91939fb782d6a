import hmac
import ipaddress

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from marketplace.core import health, metrics


def home(request):
    return render(request, "core/home.html")


# --- operations: answered by OperationsEndpointsMiddleware, ahead of the host check and the HTTPS redirect ------


def is_operator(request) -> bool:
    """A caller trusted with metrics and readiness details: the METRICS_TOKEN bearer, or a client address in
    METRICS_ALLOWED_NETWORKS (loopback unless METRICS_TOKEN is set). A request that came through a proxy
    (X-Forwarded-For, Forwarded) is never taken for a local one: behind a proxy on the same machine, every
    visitor arrives from 127.0.0.1."""
    token = settings.METRICS_TOKEN
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
        return True
    if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    address = getattr(address, "ipv4_mapped", None) or address
    return any(address in ipaddress.ip_network(network) for network in settings.METRICS_ALLOWED_NETWORKS)


@never_cache
@require_safe
def healthz(request):
    """The process is up and answering; nothing else is looked at."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request):
    """200 when every dependency answers, else 503 naming those that did not. Why they failed (the errors
    can name internal hosts) is shown to operators only, and always logged."""
    results = health.readiness()
    operator = is_operator(request)
    checks = {}
    for name, result in results.items():
        checks[name] = {"ok": result.ok, "seconds": round(result.seconds, 3)}
        if operator:
            checks[name].update({"error": result.error} if not result.ok else {"detail": result.detail})
    failed = [name for name, result in results.items() if not result.ok]
    body = {"status": "unavailable" if failed else "ok", "checks": checks}
    if failed:
        body["failed"] = failed
    response = JsonResponse(body, status=503 if failed else 200)
    # health.readiness() logged the failure, with its reasons: not again as a server error (nor to Sentry)
    # at every probe.
    response._has_been_logged = True
    return response


@never_cache
@require_safe
def metrics_page(request):
    if not is_operator(request):
        response = HttpResponse(
            "Metrics are served to the METRICS_TOKEN bearer and METRICS_ALLOWED_NETWORKS only.\n",
            status=403,
            content_type="text/plain",
        )
        if settings.METRICS_TOKEN:
            response.status_code = 401
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    from prometheus_client import CONTENT_TYPE_LATEST

    return HttpResponse(metrics.render_web_metrics(), content_type=CONTENT_TYPE_LATEST)
