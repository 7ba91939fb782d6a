"""REST API for creators' images: thin views over services and selectors."""

from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, parsers, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from marketplace.catalog import licences, selectors, services
from marketplace.catalog.models import Asset
from marketplace.catalog.parsers import UploadParser
from marketplace.catalog.validation import UploadRejected
from marketplace.core.ids import IdListField, IdLookupMixin

FILE_KINDS = ("thumbnail", "preview", "delivery", "original")


class AssetSerializer(serializers.ModelSerializer):
    display_status = serializers.CharField(read_only=True)
    # Declared, not inferred from the model: an image may have no licence yet, and the schema must allow "".
    licence = serializers.ChoiceField(choices=licences.CHOICES, allow_blank=True, read_only=True)
    tags = serializers.ListField(child=serializers.CharField(), source="tag_names", read_only=True)
    licence_name = serializers.SerializerMethodField()
    rights_override_confirmed = serializers.SerializerMethodField()
    has_model_release = serializers.SerializerMethodField()
    has_property_release = serializers.SerializerMethodField()
    owner = serializers.CharField(source="owner.username", read_only=True)
    page_url = serializers.SerializerMethodField()
    files = serializers.SerializerMethodField()
    holds = serializers.SerializerMethodField(help_text="Why the image is held out of packs, if it is.")

    class Meta:
        model = Asset
        fields = [
            "id", "owner", "status", "display_status", "failure_reason", "original_filename", "format",
            "byte_size", "width", "height", "sha256", "phash", "title", "description", "tags", "licence",
            "licence_name", "ai_training_consent", "consent_given_at", "rights_override_confirmed",
            "people_identifiable", "has_model_release", "has_property_release", "embedded_creator",
            "embedded_copyright", "embedded_data_mining", "embedded_prohibits_ai_training", "camera_make",
            "camera_model", "lens_model", "captured_at", "location_removed", "withdrawn_at", "taken_down_at",
            "takedown_reason", "created_at", "processed_at", "page_url", "files", "holds",
        ]  # fmt: skip
        read_only_fields = fields

    def get_licence_name(self, asset) -> str:
        info = asset.licence_info
        return info.name if info else ""

    def get_rights_override_confirmed(self, asset) -> bool:
        return asset.rights_override_confirmed_at is not None

    def get_has_model_release(self, asset) -> bool:
        return bool(asset.model_release)

    def get_has_property_release(self, asset) -> bool:
        return bool(asset.property_release)

    def get_holds(self, asset) -> list[dict]:
        # Holds are curation's; read through the (prefetched) reverse relation, not an import of it.
        active = sorted((hold for hold in asset.holds.all() if hold.is_active), key=lambda hold: hold.created_at)
        return [{"reason": hold.reason, "since": hold.created_at} for hold in active]

    def get_page_url(self, asset) -> str:
        return reverse("catalog:asset", args=[asset.pk])

    def get_files(self, asset) -> dict[str, str | None]:
        return {
            kind: reverse("catalog:asset-file", args=[asset.pk, kind]) if getattr(asset, kind) else None
            for kind in FILE_KINDS
        }


class TagListField(serializers.ListField):
    """Tags as a JSON list, or repeated/comma-separated form fields."""

    child = serializers.CharField(allow_blank=True, max_length=200)

    def to_internal_value(self, data):
        if isinstance(data, str):
            data = data.split(",")
        elif hasattr(data, "getlist"):
            data = [part for item in data.getlist(self.field_name) for part in item.split(",")]
        return super().to_internal_value(data)

    def get_value(self, dictionary):
        if hasattr(dictionary, "getlist") and self.field_name in dictionary:
            return [part for item in dictionary.getlist(self.field_name) for part in item.split(",")]
        return super().get_value(dictionary)


class MetadataSerializer(serializers.Serializer):
    title = serializers.CharField(required=False, allow_blank=True, max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000)
    tags = TagListField(required=False)
    licence = serializers.ChoiceField(choices=licences.CHOICES, required=False, allow_blank=True)
    ai_training_consent = serializers.BooleanField(required=False)
    rights_override_confirmed = serializers.BooleanField(required=False)
    people_identifiable = serializers.BooleanField(required=False)
    model_release = serializers.FileField(required=False, help_text="PDF, JPEG or PNG.")
    property_release = serializers.FileField(required=False, help_text="PDF, JPEG or PNG.")

    def split(self) -> tuple[dict, dict]:
        """(field changes, release files) as the services take them; only fields the client sent."""
        data = dict(self.validated_data)
        releases = {name: data.pop(name) for name in services.RELEASE_FIELDS if name in data}
        return data, releases


class UploadSerializer(MetadataSerializer):
    # Empty files reach our validation, which explains the problem like every other rejection.
    file = serializers.FileField(help_text="A JPEG, PNG or WebP image.", allow_empty_file=True)


class TakedownSerializer(serializers.Serializer):
    reason = serializers.CharField(
        max_length=services.TAKEDOWN_REASON_MAX,
        help_text="Why the platform takes the image down; shown to its creator.",
    )


class BulkUpdateSerializer(MetadataSerializer):
    ids = IdListField(allow_empty=False, max_length=500)


class AssetViewSet(IdLookupMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The signed-in creator's images (staff: everyone's)."""

    serializer_class = AssetSerializer
    parser_classes = [UploadParser, parsers.FormParser, parsers.JSONParser]  # UploadParser: our file-name rule

    def get_queryset(self):
        params = self.request.query_params
        return selectors.filter_assets(
            selectors.visible_assets(self.request.user),
            status=params.get("status", ""),
            licence=params.get("licence", ""),
            consent=params.get("consent", ""),
            tag=params.get("tag", ""),
            search=params.get("q", ""),
        )

    @extend_schema(
        request={"multipart/form-data": UploadSerializer},  # an upload carries a file: only a multipart form can
        responses={
            201: AssetSerializer,
            400: OpenApiResponse(description="Rejected: the reason is in `detail`, its kind in `code`."),
            409: OpenApiResponse(description="You already uploaded this exact image: see `existing`."),
        },
    )
    def create(self, request):
        """Upload one image (multipart), optionally with its metadata."""
        # partial: a multipart form that leaves out a checkbox means "unchanged", not False.
        serializer = UploadSerializer(data=request.data, partial=True)
        if not serializer.is_valid():
            return Response(serializer.errors, status=status.HTTP_400_BAD_REQUEST)
        changes, releases = serializer.split()
        uploaded = changes.pop("file", None)
        if uploaded is None:
            return Response(
                {"code": "no_file", "detail": "No file was sent.", "file": ["No file was sent."]}, status=400
            )
        try:
            asset = services.upload_asset(
                owner=request.user, uploaded_file=uploaded, metadata=changes, releases=releases
            )
        except services.DuplicateUpload as duplicate:
            existing = duplicate.existing
            return Response(
                {
                    "code": duplicate.code,
                    "detail": duplicate.message,
                    "existing": {"id": existing.pk, "page_url": reverse("catalog:asset", args=[existing.pk])},
                },
                status=status.HTTP_409_CONFLICT,
            )
        except UploadRejected as rejected:
            return Response(
                {"code": rejected.code, "detail": rejected.message, "file": [rejected.message]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        return Response(AssetSerializer(asset).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=MetadataSerializer, responses={200: AssetSerializer})
    def partial_update(self, request, pk=None):
        """Change an image's metadata, licence, consent or releases (its creator); staff: title, description, tags."""
        asset = self.get_object()
        serializer = MetadataSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        changes, releases = serializer.split()
        asset = services.update_asset_metadata(asset, actor=request.user, changes=changes, releases=releases)
        return Response(AssetSerializer(selectors.get_visible_asset(request.user, asset.pk)).data)

    @extend_schema(request=BulkUpdateSerializer, responses={200: AssetSerializer(many=True)})
    @action(detail=False, methods=["post"], pagination_class=None)  # the changed images, all of them
    def bulk(self, request):
        """Apply the same metadata to many images; all change or none (errors keyed by image id)."""
        serializer = BulkUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        changes, releases = serializer.split()
        ids = changes.pop("ids", None)
        if not ids:
            return Response({"ids": ["Choose at least one image."]}, status=400)
        assets = list(selectors.visible_assets(request.user).filter(pk__in=ids))
        missing = sorted(set(ids) - {asset.pk for asset in assets})
        if missing:
            return Response({"ids": [f"No such image: {', '.join(map(str, missing))}."]}, status=400)
        updated = services.bulk_update_metadata(actor=request.user, assets=assets, changes=changes, releases=releases)
        fresh = selectors.visible_assets(request.user).filter(pk__in=[a.pk for a in updated]).order_by("pk")
        return Response(AssetSerializer(fresh, many=True).data)

    @extend_schema(request=None, responses={200: AssetSerializer})
    @action(detail=True, methods=["post"])
    def withdraw(self, request, pk=None):
        """Withdraw the image from all future packs (its history is kept). Its creator only."""
        asset = services.withdraw_asset(self.get_object(), actor=request.user)
        return Response(AssetSerializer(selectors.get_visible_asset(request.user, asset.pk)).data)

    @extend_schema(request=TakedownSerializer, responses={200: AssetSerializer})
    @action(detail=True, methods=["post"])
    def takedown(self, request, pk=None):
        """Staff: take the image down (out of sale and every future pack) for a reason its creator is shown."""
        asset = self.get_object()
        # The service checks who asks before the reason, so that a refusal says only that.
        reason = request.data.get("reason") if hasattr(request.data, "get") else None  # a JSON list has none
        asset = services.take_down_asset(asset, actor=request.user, reason=reason)
        return Response(AssetSerializer(selectors.get_visible_asset(request.user, asset.pk)).data)

    @extend_schema(request=None, responses={200: AssetSerializer})
    @action(detail=True, methods=["post"])
    def reinstate(self, request, pk=None):
        """Staff: lift a takedown, until a published pack version depends on it."""
        asset = services.reinstate_asset(self.get_object(), actor=request.user)
        return Response(AssetSerializer(selectors.get_visible_asset(request.user, asset.pk)).data)

    @extend_schema(request=None, responses={200: AssetSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Queue processing again for an image whose processing failed."""
        asset = services.retry_processing(self.get_object(), actor=request.user)
        return Response(AssetSerializer(selectors.get_visible_asset(request.user, asset.pk)).data)


class LicenceSerializer(serializers.Serializer):
    code = serializers.CharField()
    name = serializers.CharField()
    summary = serializers.CharField()
    terms = serializers.ListField(child=serializers.CharField())
    allows_ai_training = serializers.BooleanField()
    allows_commercial_models = serializers.BooleanField()
    requires_attribution = serializers.BooleanField()
    url = serializers.CharField()


class LicenceViewSet(viewsets.ViewSet):
    """The licences a creator can choose, with their terms."""

    permission_classes = []
    serializer_class = LicenceSerializer

    def list(self, request):
        return Response(LicenceSerializer(licences.LICENCES, many=True).data)
