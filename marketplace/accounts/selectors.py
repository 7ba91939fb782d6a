from marketplace.accounts.models import PendingSignup, User


def pending_signup(token: str) -> PendingSignup | None:
    """The sign-up a mailed link carries, while the link works: made by us, not expired, and not used (once its
    address has an account, that and every other link for the address stop working)."""
    pending = PendingSignup.from_token(token)
    if pending is None or User.objects.filter(email__iexact=pending.email).exists():
        return None
    return pending
