from django.dispatch import Signal

# Sent once an asset's processing has committed and it is ready; receivers get `asset_id`.
# Curation listens, so that the catalogue does not depend on it.
asset_ready = Signal()
