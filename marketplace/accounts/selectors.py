from marketplace.accounts.models import PendingSignup


def pending_signup(token: str) -> PendingSignup | None:
    """The unexpired pending sign-up a mailed token belongs to, if any."""
    return PendingSignup.objects.filter(
        token_hash=PendingSignup.hash_token(token), created_at__gte=PendingSignup.oldest_valid()
    ).first()
