"""REST API for buyers' scripts: their licences and signed download links (token or session auth)."""

from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from marketplace.commerce import selectors
from marketplace.commerce.models import PackLicence


class PackLicenceSerializer(serializers.ModelSerializer):
    pack = serializers.CharField(source="version.pack.slug")
    version = serializers.IntegerField(source="version.number")
    title = serializers.CharField(source="version.title")
    active = serializers.BooleanField(source="is_active")
    certificate_url = serializers.SerializerMethodField()
    downloads_url = serializers.SerializerMethodField()

    class Meta:
        model = PackLicence
        fields = [
            "id", "pack", "version", "title", "manifest_sha256", "terms", "granted_at", "active", "revoked_at",
            "revoked_reason", "certificate_url", "downloads_url",
        ]  # fmt: skip

    def get_certificate_url(self, licence) -> str:
        return self.context["request"].build_absolute_uri(reverse("commerce:certificate", args=[licence.pk]))

    def get_downloads_url(self, licence) -> str:
        return self.context["request"].build_absolute_uri(reverse("pack-licence-downloads", args=[licence.pk]))


class DownloadFileSerializer(serializers.Serializer):
    name = serializers.CharField()
    bytes = serializers.IntegerField()
    sha256 = serializers.CharField()
    url = serializers.CharField(
        help_text="A signed bearer link to this one file: it downloads without logging in (send no session) for "
        "DOWNLOAD_LINK_SECONDS (15 minutes by default), then answers 403; also 403 in another account's session, "
        "once the licence is revoked, and once the download is rebuilt. Ask this endpoint again for fresh links."
    )


class ExportSerializer(serializers.Serializer):
    kind = serializers.CharField()
    status = serializers.CharField()
    done_items = serializers.IntegerField()
    total_items = serializers.IntegerField()
    files = DownloadFileSerializer(many=True)


class PackLicenceViewSet(viewsets.ReadOnlyModelViewSet):
    """The buyer's own licences; nobody sees another buyer's."""

    serializer_class = PackLicenceSerializer
    queryset = PackLicence.objects.none()  # for the schema; requests get the buyer's own below

    def get_queryset(self):
        return selectors.buyer_licences(self.request.user).order_by("-granted_at")

    @extend_schema(
        responses={
            200: ExportSerializer(many=True),
            403: OpenApiResponse(description="The licence was revoked: the reason is in `detail`."),
        }
    )
    @action(detail=True, methods=["get"], pagination_class=None)  # one row per download format, never paged
    def downloads(self, request, pk=None):
        licence = self.get_object()
        if not licence.is_active:
            raise PermissionDenied(f"This licence was revoked: {licence.revoked_reason}")
        rows = [
            {
                "kind": row["export"].kind,
                "status": row["export"].status,
                "done_items": row["export"].done_items,
                "total_items": row["export"].total_items,
                "files": [{**f, "url": request.build_absolute_uri(f["url"])} for f in row["files"]],
            }
            for row in selectors.download_listing(licence)
        ]
        return Response(ExportSerializer(rows, many=True).data)
