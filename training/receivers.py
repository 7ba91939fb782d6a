from django.dispatch import receiver

from marketplace.commerce.signals import licence_revoked
from training import services


@receiver(licence_revoked)
def stop_training_runs(sender, licence_id, **kwargs):
    services.stop_runs_of_licence(licence_id)
