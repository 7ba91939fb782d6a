from rest_framework.routers import DefaultRouter

from training.api import TrainingRunViewSet

router = DefaultRouter()
router.register("training-runs", TrainingRunViewSet, basename="training-run")
urlpatterns = router.urls
