"""The Content-Security-Policy of every page: settings.CONTENT_SECURITY_POLICY plus the payments provider's
origins, taken from the payments settings at each response so the policy always allows exactly the Stripe.js
(and API) that the checkout page uses: the fake Stripe's origin, or js.stripe.com and api.stripe.com."""

from csp.middleware import CSPMiddleware
from django.conf import settings

STRIPE_API = "https://api.stripe.com"
# Stripe.js draws its card field in a frame from js.stripe.com and 3-D Secure checks in one from hooks.stripe.com;
# the fake Stripe draws both in the page itself.
STRIPE_FRAMES = ("https://hooks.stripe.com",)


def origin(url: str) -> str:
    """scheme://host[:port] of a URL: what a policy's source list names."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else ""


def payments_sources() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(sources to add, directives to replace) for the payments provider."""
    script = origin(settings.STRIPE_JS_URL)
    api = origin(settings.STRIPE_API_BASE) if settings.STRIPE_API_BASE else STRIPE_API
    added = {"script-src": [script], "connect-src": [api]}
    replaced = {"frame-src": [script, *STRIPE_FRAMES]} if settings.PAYMENTS_MODE == "stripe" else {}
    return added, replaced


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    def get_policy_parts(self, request, response, report_only=False):
        parts = super().get_policy_parts(request, response, report_only)
        if report_only:
            return parts
        added, replaced = payments_sources()
        update = dict(parts.update or {})
        for directive, sources in added.items():
            update[directive] = [*update.get(directive, []), *sources]
        parts.update = update
        parts.replace = {**replaced, **(parts.replace or {})}
        return parts
