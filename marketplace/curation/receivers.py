from django.conf import settings
from django.dispatch import receiver

from marketplace.catalog.signals import asset_ready, rights_override_confirmed
from marketplace.curation import services


@receiver(asset_ready)
def analyse_when_ready(sender, asset_id, **kwargs):
    services.flag_rights_conflicts(asset_id)  # needs no model: never waits for one
    if settings.CURATION_ANALYSE_ON_READY:
        services.queue_analysis([asset_id])


@receiver(rights_override_confirmed)
def review_rights_override(sender, asset_id, **kwargs):
    services.flag_rights_conflicts(asset_id)
