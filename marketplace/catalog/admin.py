from django.contrib import admin

from marketplace.catalog.models import Asset, AssetEvent, Tag


class AssetEventInline(admin.TabularInline):
    model = AssetEvent
    extra = 0
    can_delete = False
    readonly_fields = ("kind", "actor", "details", "created_at")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Asset)
class AssetAdmin(admin.ModelAdmin):
    list_display = ("id", "display_title", "owner", "status", "licence", "ai_training_consent", "withdrawn_at")
    list_filter = ("status", "licence", "ai_training_consent", "embedded_prohibits_ai_training", "format")
    search_fields = ("title", "original_filename", "sha256", "owner__username")
    readonly_fields = [f.name for f in Asset._meta.fields]
    inlines = [AssetEventInline]

    def has_add_permission(self, request):
        return False  # uploads go through the validated upload path


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    search_fields = ("name",)
