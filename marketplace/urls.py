from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("", include("marketplace.core.urls")),
    path("accounts/", include("marketplace.accounts.urls")),
    path("", include("marketplace.catalog.urls")),
    path("curation/", include("marketplace.curation.urls")),
    path("", include("marketplace.packs.urls")),
    path("", include("marketplace.commerce.urls")),
    path("", include("marketplace.royalties.urls")),
    path("", include("training.urls")),
    path("api/", include("marketplace.accounts.api_urls")),
    path("api/", include("marketplace.catalog.api_urls")),
    path("api/", include("marketplace.commerce.api_urls")),
    path("api/", include("training.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("admin/", admin.site.urls),
]

# Under /api/, Django's own errors (no such URL, an unreadable request) are JSON like the API's.
handler400 = "marketplace.core.api_errors.bad_request"
handler403 = "marketplace.core.api_errors.permission_denied"
handler404 = "marketplace.core.api_errors.page_not_found"
handler500 = "marketplace.core.api_errors.server_error"
