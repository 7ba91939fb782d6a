"""The Content-Security-Policy of every page: settings.CONTENT_SECURITY_POLICY plus the payments provider's
origins, taken from the payments settings so the policy always allows exactly the Stripe.js (and API) that the
checkout page uses: the fake Stripe's origin, or js.stripe.com and api.stripe.com. They are worked out once, and
again whenever one of the settings they come from changes (override_settings, pytest-django's `settings`)."""

import functools

from csp.middleware import CSPMiddleware
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

STRIPE_API = "https://api.stripe.com"
# Stripe.js draws its card field in a frame from js.stripe.com and 3-D Secure checks in one from hooks.stripe.com;
# the fake Stripe draws both in the page itself.
STRIPE_FRAMES = ("https://hooks.stripe.com",)
PAYMENTS_SETTINGS = frozenset({"STRIPE_JS_URL", "STRIPE_API_BASE", "PAYMENTS_MODE"})  # what payments_sources reads


def origin(url: str) -> str:
    """scheme://host[:port] of a URL: what a policy's source list names."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else ""


@functools.cache
def payments_sources() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(sources to add, directives to replace) for the payments provider. Not to be changed: it is shared."""
    script = origin(settings.STRIPE_JS_URL)
    api = origin(settings.STRIPE_API_BASE) if settings.STRIPE_API_BASE else STRIPE_API
    added = {"script-src": [script], "connect-src": [api]}
    replaced = {"frame-src": [script, *STRIPE_FRAMES]} if settings.PAYMENTS_MODE == "stripe" else {}
    return added, replaced


@receiver(setting_changed)
def _payments_settings_changed(*, setting, **kwargs):
    if setting in PAYMENTS_SETTINGS:
        payments_sources.cache_clear()


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    def get_policy_parts(self, request, response, report_only=False):
        parts = super().get_policy_parts(request, response, report_only)
        if report_only:
            return parts
        added, replaced = payments_sources()
        if parts.update:  # a view's own @csp_update: its sources and the provider's
            parts.update = {**parts.update, **{d: [*parts.update.get(d, []), *s] for d, s in added.items()}}
        else:
            parts.update = added
        parts.replace = {**replaced, **parts.replace} if parts.replace else replaced
        return parts
