from django.urls import path

from marketplace.catalog import views

app_name = "catalog"
urlpatterns = [
    path("upload/", views.upload, name="upload"),
    path("my/uploads/", views.my_uploads, name="my-uploads"),
    path("assets/<id:pk>/", views.asset_detail, name="asset"),
    path("assets/<id:pk>/edit/", views.asset_edit, name="asset-edit"),
    path("assets/<id:pk>/withdraw/", views.asset_withdraw, name="asset-withdraw"),
    path("assets/<id:pk>/retry/", views.asset_retry, name="asset-retry"),
    path("assets/<id:pk>/takedown/", views.asset_takedown, name="asset-takedown"),
    path("assets/<id:pk>/reinstate/", views.asset_reinstate, name="asset-reinstate"),
    path("assets/<id:pk>/files/<slug:kind>/", views.asset_file, name="asset-file"),
    path("licences/", views.licence_list, name="licences"),
]
