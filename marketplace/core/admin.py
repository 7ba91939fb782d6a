from django.contrib import admin


class ReadOnlyAdmin(admin.ModelAdmin):
    """For records that only the application writes (published versions, payments, the ledger): shown, never edited."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
