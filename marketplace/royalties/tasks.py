from celery import shared_task

from marketplace.royalties import services


@shared_task(acks_late=True)
def pay_out_all() -> dict:
    """Periodic (Celery beat): pay every creator who is due, and resend payouts whose outcome was unknown.
    Safe to run twice at once: each payout is created under a row lock and sent with its idempotency key."""
    return services.pay_out_all()
