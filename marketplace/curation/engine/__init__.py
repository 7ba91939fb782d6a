"""Curation's Django-free core: CLIP models, captions, tags, quality, near-duplicate indexes.

Nothing here imports Django, so a GPU worker or a benchmark can use it directly.
"""
