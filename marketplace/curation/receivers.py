from django.conf import settings
from django.dispatch import receiver

from marketplace.catalog.signals import asset_ready
from marketplace.curation import services


@receiver(asset_ready)
def analyse_when_ready(sender, asset_id, **kwargs):
    if settings.CURATION_ANALYSE_ON_READY:
        services.queue_analysis([asset_id])
