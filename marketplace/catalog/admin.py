from django.contrib import admin

from marketplace.catalog.models import Asset, AssetEvent, Tag
from marketplace.core.admin import ReadOnlyAdmin


class AssetEventInline(admin.TabularInline):
    model = AssetEvent
    extra = 0
    can_delete = False
    readonly_fields = ("kind", "actor", "details", "created_at")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Asset)
class AssetAdmin(ReadOnlyAdmin):
    """Read-only: an image's licence, consent and releases are its creator's alone, and staff moderation
    (corrections, takedowns) goes through the site's pages and API, whose services check who acts and record it.
    Uploads likewise go only through the validated upload path."""

    list_display = (
        "id", "display_title", "owner", "status", "licence", "ai_training_consent", "withdrawn_at", "taken_down_at",
    )  # fmt: skip
    list_filter = ("status", "licence", "ai_training_consent", "embedded_prohibits_ai_training", "format")
    search_fields = ("title", "original_filename", "sha256", "owner__username")
    readonly_fields = [f.name for f in Asset._meta.fields] + ["tags"]
    inlines = [AssetEventInline]


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    search_fields = ("name",)
