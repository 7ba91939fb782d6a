from django.dispatch import Signal

# Sent after commit when a licence is revoked (its payment was refunded); receivers get `licence_id`.
# Training listens: a revoked licence stops its queued and running training runs.
licence_revoked = Signal()
