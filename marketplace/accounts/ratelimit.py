"""Failed log-in counting, shared by every web process through the cache.

Failures are counted per (username, client address) and per client address, so a
guesser is stopped on one account and across accounts, while a victim can still log
in from their own address.
"""

from django.conf import settings
from django.core.cache import cache

# One address may try several accounts (people behind one office NAT) before it is stopped.
PER_ADDRESS_FACTOR = 4


def client_address(request) -> str:
    return request.META.get("REMOTE_ADDR", "") if request is not None else ""


def _counters(username: str, address: str) -> list[tuple[str, int]]:
    limit = settings.LOGIN_MAX_FAILURES
    return [
        (f"login-failures:account:{username.strip().lower()}:{address}", limit),
        (f"login-failures:address:{address}", limit * PER_ADDRESS_FACTOR),
    ]


def is_locked_out(username: str, address: str) -> bool:
    return any((cache.get(key) or 0) >= limit for key, limit in _counters(username, address))


def record_failure(username: str, address: str) -> None:
    for key, _limit in _counters(username, address):
        cache.add(key, 0, timeout=settings.LOGIN_LOCKOUT_SECONDS)
        try:
            cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=settings.LOGIN_LOCKOUT_SECONDS)


def record_success(username: str, address: str) -> None:
    cache.delete(_counters(username, address)[0][0])


def lockout_message() -> str:
    minutes = max(1, settings.LOGIN_LOCKOUT_SECONDS // 60)
    return f"Too many failed log-in attempts. Wait {minutes} minutes and try again, or reset your password."
