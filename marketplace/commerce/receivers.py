from django.dispatch import receiver

from marketplace.commerce import services
from marketplace.packs.signals import items_revoked


@receiver(items_revoked)
def notify_licensees(sender, revocation_ids, **kwargs):
    services.notify_licensees_of_revocations(revocation_ids)
