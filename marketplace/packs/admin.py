from django.contrib import admin, messages

from marketplace.core.admin import ReadOnlyAdmin
from marketplace.packs.models import Pack, PackExport, PackItem, PackVersion, Revocation


@admin.register(Pack)
class PackAdmin(admin.ModelAdmin):
    list_display = ("title", "slug", "use", "price_cents", "size", "is_listed", "updated_at")
    list_filter = ("use", "is_listed")
    search_fields = ("title", "slug")
    prepopulated_fields = {"slug": ("title",)}
    readonly_fields = ("created_by", "created_at", "updated_at")


class PackItemInline(admin.TabularInline):
    model = PackItem
    fields = ("key", "asset", "creator", "title", "licence", "file_format", "width", "height", "sha256")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(PackVersion)
class PackVersionAdmin(ReadOnlyAdmin):
    list_display = ("pack", "number", "item_count", "creator_count", "price_cents", "use", "published_at")
    list_filter = ("use",)
    search_fields = ("pack__title", "pack__slug", "manifest_sha256")
    inlines = [PackItemInline]


@admin.register(PackItem)
class PackItemAdmin(ReadOnlyAdmin):
    list_display = ("version", "key", "asset", "creator", "licence", "byte_size")
    list_select_related = ("version", "asset", "creator")
    search_fields = ("sha256", "title")


@admin.register(Revocation)
class RevocationAdmin(ReadOnlyAdmin):
    list_display = ("version", "item", "reason", "revoked_at")
    list_filter = ("reason",)
    list_select_related = ("version", "item")


@admin.register(PackExport)
class PackExportAdmin(ReadOnlyAdmin):
    list_display = ("version", "kind", "status", "done_items", "total_items", "updated_at")
    actions = ["retry"]

    @admin.action(description="Build again (failed exports, or ones whose build was lost)")
    def retry(self, request, queryset):
        from marketplace.packs.exports import ExportError, retry_export

        for export in queryset:
            try:
                retry_export(export)
            except ExportError as error:
                self.message_user(request, f"{export}: {error}", messages.ERROR)
            else:
                self.message_user(request, f"{export}: queued.")

    list_filter = ("kind", "status")
