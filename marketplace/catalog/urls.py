from django.urls import path

from marketplace.catalog import views

app_name = "catalog"
urlpatterns = [
    path("upload/", views.upload, name="upload"),
    path("my/uploads/", views.my_uploads, name="my-uploads"),
    path("assets/<int:pk>/", views.asset_detail, name="asset"),
    path("assets/<int:pk>/edit/", views.asset_edit, name="asset-edit"),
    path("assets/<int:pk>/withdraw/", views.asset_withdraw, name="asset-withdraw"),
    path("assets/<int:pk>/retry/", views.asset_retry, name="asset-retry"),
    path("assets/<int:pk>/files/<slug:kind>/", views.asset_file, name="asset-file"),
    path("licences/", views.licence_list, name="licences"),
]
