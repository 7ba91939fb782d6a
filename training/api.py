"""REST API for training runs: staff launch and cancel; staff and the licence holder read runs and outputs."""

from django.urls import reverse
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from marketplace.commerce.models import PackLicence
from marketplace.core.ids import IdLookupMixin
from training import presets, selectors, services
from training.models import TrainingRun
from training.views import OUTPUT_FILES


class TrainingRunSerializer(serializers.ModelSerializer):
    licence = serializers.UUIDField(source="licence_id", read_only=True)
    pack = serializers.CharField(source="licence.version.pack.slug", read_only=True)
    version = serializers.IntegerField(source="licence.version.number", read_only=True)
    page_url = serializers.SerializerMethodField()
    files = serializers.SerializerMethodField(help_text="Output downloads, once the run succeeded.")
    usage_by_creator = serializers.SerializerMethodField()

    class Meta:
        model = TrainingRun
        fields = [
            "id", "licence", "pack", "version", "base_model_key", "base_model", "config", "status", "step",
            "total_steps", "images_per_second", "created_at", "started_at", "finished_at", "worker_host",
            "cancel_requested_at", "cancel_reason", "error", "log_tail", "losses", "family", "holdout_keys",
            "evaluations", "best_step", "page_url", "files", "usage_by_creator",
        ]  # fmt: skip
        read_only_fields = fields

    def _url(self, name, *args) -> str:
        return self.context["request"].build_absolute_uri(reverse(name, args=args))

    def get_page_url(self, run) -> str:
        return self._url("training:detail", run.pk)

    def get_files(self, run) -> dict[str, str]:
        if run.status != TrainingRun.Status.SUCCEEDED:
            return {}
        return {
            kind: self._url("training:file", run.pk, kind)
            for kind, spec in OUTPUT_FILES.items()
            if getattr(run, spec[0])
        }

    def get_usage_by_creator(self, run) -> list[dict]:
        return selectors.usage_by_creator(run)


class LaunchSerializer(serializers.Serializer):
    licence = serializers.UUIDField()
    preset = serializers.CharField(
        required=False,
        help_text="A preset's key (a base model's, e.g. sd15, sdxl, flux1-dev, demo): that base model with the "
        "hyperparameters the registry recommends for it.",
    )
    base_model_key = serializers.CharField(
        max_length=100,
        required=False,
        help_text="A base model's key in the registry (e.g. sd15, sdxl, flux1-schnell); required without a preset. "
        "A pack licensed for commercial models needs a base model whose licence allows commercial use.",
    )
    hyperparameters = serializers.DictField(
        required=False, help_text="TrainConfig fields; they override the preset's; omitted ones default."
    )

    def validate_hyperparameters(self, value):
        # Stored as JSON in the database: PostgreSQL's jsonb refuses a NUL character (a 500 rather than an answer).
        def holds_nul(item) -> bool:
            if isinstance(item, str):
                return "\x00" in item
            if isinstance(item, dict):
                return any(holds_nul(key) or holds_nul(inner) for key, inner in item.items())
            return isinstance(item, list) and any(holds_nul(inner) for inner in item)

        if holds_nul(value):
            raise serializers.ValidationError("Hyperparameters may not hold a NUL character.")
        return value

    def validate(self, data):
        preset = None
        if data.get("preset"):
            preset = presets.get_preset(data["preset"])
            if preset is None:
                keys = ", ".join(p.key for p in presets.available_presets())
                raise serializers.ValidationError(
                    {"preset": f"Unknown preset {data['preset']!r}; these exist: {keys}."}
                )
        base_model_key = data.get("base_model_key") or (preset.base_model_key if preset else "")
        if not base_model_key:
            raise serializers.ValidationError({"base_model_key": "Name a base model (its key), or a preset."})
        data["base_model_key"] = base_model_key
        data["hyperparameters"] = {**(preset.values if preset else {}), **data.get("hyperparameters", {})}
        return data


class LaunchSchema(OpenApiSerializerExtension):
    """The launch body needs a preset or a base model's key (or both): the schema says so, not only the prose."""

    target_class = LaunchSerializer

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_basic_serializer(self.target, direction)
        schema["anyOf"] = [{"required": ["preset"]}, {"required": ["base_model_key"]}]
        return schema


class TrainingRunViewSet(IdLookupMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Staff see every run; a buyer sees the runs of their own licences. Only staff launch or cancel."""

    serializer_class = TrainingRunSerializer
    queryset = TrainingRun.objects.none()  # for the schema; requests get the visible runs below

    def get_queryset(self):
        params = self.request.query_params
        runs = selectors.visible_runs(self.request.user)
        return selectors.filter_runs(
            runs, status=params.get("status", ""), pack=params.get("pack", ""), buyer=params.get("buyer", "")
        ).order_by("-created_at")

    @extend_schema(request=LaunchSerializer, responses={201: TrainingRunSerializer})
    def create(self, request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("Only staff launch training runs.")
        launch = LaunchSerializer(data=request.data)
        launch.is_valid(raise_exception=True)
        licence = PackLicence.objects.filter(pk=launch.validated_data["licence"]).first()
        run = services.launch_run(
            actor=request.user,
            licence=licence,
            base_model_key=launch.validated_data["base_model_key"],
            **launch.validated_data["hyperparameters"],
        )
        return Response(self.get_serializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=TrainingRunSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        run = services.cancel_run(self.get_object(), actor=request.user)
        return Response(self.get_serializer(run).data)
