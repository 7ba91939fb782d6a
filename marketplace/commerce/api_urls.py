from rest_framework.routers import DefaultRouter

from marketplace.commerce.api import PackLicenceViewSet

router = DefaultRouter()
router.register("pack-licences", PackLicenceViewSet, basename="pack-licence")
urlpatterns = router.urls
