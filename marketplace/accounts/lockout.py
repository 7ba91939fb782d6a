"""Failed log-in counting with django-axes, stored in the database so every web process shares it.

Three counters, each over the last LOGIN_LOCKOUT_SECONDS:

- one account from one client address: LOGIN_MAX_FAILURES failures lock that pair;
- one client address over all accounts: PER_ADDRESS_FACTOR times as many (people behind one office NAT)
  lock that address, so one address cannot spray passwords over many accounts;
- one account over all addresses: PER_ACCOUNT_FACTOR times as many lock the account, so a guesser with many
  addresses (a botnet) is stopped too. This counter does not apply at an address the account has logged in from
  before: an attacker can lock the account for strangers, never for its owner at home or at the office. Failures
  made while locked are not counted, so hammering a locked account does not prolong its lock.

The client address is the connecting one, or, behind TRUSTED_PROXY_COUNT reverse proxies of our own, the address
the outermost of them saw (X-Forwarded-For read from the right): a client cannot choose it by sending the header.
"""

import ipaddress
from datetime import timedelta

from axes.handlers.database import AxesDatabaseHandler
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_username, get_lockout_parameters
from axes.models import AccessAttempt, AccessLog
from django.conf import settings
from django.db.models import Sum
from django.http import HttpResponse

PER_ADDRESS_FACTOR = 4
PER_ACCOUNT_FACTOR = 4
# The counters (settings.AXES_LOCKOUT_PARAMETERS), with how many times LOGIN_MAX_FAILURES each allows.
ACCOUNT_AT_ADDRESS = ("username", "ip_address")
ADDRESS = ("ip_address",)
ACCOUNT = ("username",)
FACTORS = {ACCOUNT_AT_ADDRESS: 1, ADDRESS: PER_ADDRESS_FACTOR, ACCOUNT: PER_ACCOUNT_FACTOR}
USERNAME_MAX_LENGTH = 150  # the longest username an account can have; longer input is cut so it can be stored


def client_address(request) -> str | None:
    """The real client's address (AXES_CLIENT_IP_CALLABLE)."""
    meta = request.META
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies:
        # Each proxy appends the address it received the request from: the right-most `proxies` entries are theirs,
        # anything to the left of them came from the client and may be made up.
        forwarded = [part.strip() for part in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
        if len(forwarded) >= proxies:
            candidate = _valid_address(forwarded[-proxies])
            if candidate:
                return candidate
    return _valid_address(meta.get("REMOTE_ADDR", ""))


def _valid_address(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def normalised_username(request, credentials) -> str:
    """Count "Alice" and " alice" as the same account (AXES_USERNAME_CALLABLE)."""
    username = (credentials or {}).get("username")
    if username is None and request is not None:
        username = getattr(request, "data", request.POST).get("username")
    return str(username or "").strip().lower()[:USERNAME_MAX_LENGTH]


def failure_limit(request, credentials) -> int:
    return settings.LOGIN_MAX_FAILURES


def cool_off(request) -> timedelta:
    return timedelta(seconds=settings.LOGIN_LOCKOUT_SECONDS)


def lockout_message() -> str:
    minutes = max(1, settings.LOGIN_LOCKOUT_SECONDS // 60)
    return f"Too many failed log-in attempts. Wait {minutes} minutes and try again, or reset your password."


def lockout_response(request, original_response=None, credentials=None):
    """What a log-in answers when axes noticed a lock-out during the request (AXES_LOCKOUT_CALLABLE).

    The failure that reaches a limit is answered as the failure it is (the next attempt is refused); our log-in
    page and token endpoint answer a refused attempt with 429 and the message themselves; any other log-in page
    (the admin's) gets the message as text."""
    if original_response is not None and (not is_locked_out(request) or original_response.status_code == 429):
        return original_response
    return HttpResponse(lockout_message(), status=429, content_type="text/plain; charset=utf-8")


def is_locked_out(request) -> bool:
    """Whether the log-in attempted on this request was refused, unchecked, because its account or address is
    locked out."""
    return bool(getattr(request, "login_refused", False))


def record_success(request, user) -> None:
    """A log-in that made no session (the API token endpoint) clears failures as a session log-in does."""
    AxesProxyHandler.update_request(request)
    AxesProxyHandler.get_implementation().reset_user_attempts(request, {"username": user.get_username()})


class LockoutHandler(AxesDatabaseHandler):
    """axes's database handler with a limit per counter and the account counter waived at the owner's addresses."""

    def user_login_failed(self, sender, credentials, request=None, **kwargs):
        # axes's backend marks a refused attempt locked out before this runs; a failure that only now reaches a
        # limit is marked after. Only the first is told "too many attempts".
        if request is not None:
            request.login_refused = bool(getattr(request, "axes_locked_out", False))
        super().user_login_failed(sender, credentials, request, **kwargs)

    def get_failures(self, request, credentials=None) -> int:
        parameters = get_lockout_parameters(request, credentials)
        worst = 0
        for names, attempts in zip(parameters, self.get_user_attempts(request, credentials), strict=True):
            key = tuple(names)
            failures = attempts.aggregate(total=Sum("failures_since_start"))["total"] or 0
            # Scaled to the one limit axes compares with: failures reach this counter's own limit exactly when the
            # scaled figure reaches LOGIN_MAX_FAILURES.
            scaled = failures // FACTORS.get(key, 1)
            # The access log is looked up only when the account counter would decide (it is read on every attempt).
            if scaled > worst and not (key == ACCOUNT and self._is_known_address(request, credentials)):
                worst = scaled
        return worst

    def reset_user_attempts(self, request, credentials=None) -> int:
        """A successful log-in clears that account's failures from this address only: logging in to an account of
        one's own must not wipe the address's failures on other accounts, nor a botnet's on this one."""
        username = get_client_username(request, credentials)
        deleted, _ = AccessAttempt.objects.filter(username=username, ip_address=request.axes_ip_address).delete()
        return deleted

    @staticmethod
    def _is_known_address(request, credentials) -> bool:
        username = get_client_username(request, credentials)
        address = request.axes_ip_address
        return (
            bool(username and address)
            and AccessLog.objects.filter(username__iexact=username, ip_address=address).exists()
        )
