from rest_framework.routers import DefaultRouter

from marketplace.catalog.api import AssetViewSet, LicenceViewSet

router = DefaultRouter()
router.register("assets", AssetViewSet, basename="asset")
router.register("licences", LicenceViewSet, basename="licence")
urlpatterns = router.urls
