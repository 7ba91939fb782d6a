from django.contrib import admin

from training.models import TrainingRun, TrainingUsage


class TrainingUsageInline(admin.TabularInline):
    model = TrainingUsage
    extra = 0
    can_delete = False
    readonly_fields = ["asset", "creator", "times_seen"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "licence", "base_model", "status", "step", "total_steps", "worker_host", "created_at"]
    list_filter = ["status"]
    search_fields = ["base_model", "licence__buyer__username", "worker_host"]
    readonly_fields = [field.name for field in TrainingRun._meta.fields]
    inlines = [TrainingUsageInline]

    def has_add_permission(self, request):
        return False  # runs are launched from the training pages (services.launch_run)
