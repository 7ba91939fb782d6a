from django.dispatch import Signal

# Sent once an asset's processing has committed and it is ready; receivers get `asset_id`.
# Curation listens, so that the catalogue does not depend on it.
asset_ready = Signal()

# Sent after commit when a creator confirms rights over an embedded AI-training prohibition;
# receivers get `asset_id`. Curation puts such overrides in front of staff.
rights_override_confirmed = Signal()
