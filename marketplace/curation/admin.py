from django.contrib import admin

from marketplace.curation.models import AssetAnalysis, DuplicateCluster, Flag, FlagDecision, Hold


@admin.register(AssetAnalysis)
class AssetAnalysisAdmin(admin.ModelAdmin):
    list_display = ("asset", "status", "caption", "quality_ok", "metadata_score", "cluster", "analysed_at")
    list_filter = ("status", "quality_ok", "caption_source", "model_name")
    exclude = ("embedding",)
    readonly_fields = [f.name for f in AssetAnalysis._meta.fields if f.name not in ("embedding", "caption_override")]


class FlagDecisionInline(admin.TabularInline):
    model = FlagDecision
    extra = 0
    can_delete = False
    readonly_fields = ("action", "actor", "note", "created_at")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Flag)
class FlagAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "status", "asset", "other_asset", "created_at", "decided_by")
    list_filter = ("kind", "status")
    inlines = [FlagDecisionInline]
    readonly_fields = ("kind", "asset", "other_asset", "evidence", "created_at", "decided_by", "decided_at")


admin.site.register(DuplicateCluster)
admin.site.register(Hold)
