from django.dispatch import Signal

# Sent after commit when published versions lose items to a creator's withdrawal;
# receivers get `revocation_ids`. Commerce listens to notify the versions' licensees.
items_revoked = Signal()
