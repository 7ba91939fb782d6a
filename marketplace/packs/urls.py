from django.urls import path

from marketplace.packs import views

app_name = "packs"
urlpatterns = [
    path("packs/", views.pack_list, name="list"),
    path("packs/<slug:slug>/", views.pack_detail, name="detail"),
    path("packs/<slug:slug>/v<id:number>/", views.version_detail, name="version"),
    path("packs/<slug:slug>/v<id:number>/revocations/", views.revocation_list, name="revocations"),
    path("packs/<slug:slug>/v<id:number>/thumbnails/<id:item_pk>/", views.item_thumbnail, name="thumbnail"),
    path("staff/packs/", views.staff_pack_list, name="staff-list"),
    path("staff/packs/new/", views.staff_pack_edit, name="staff-new"),
    path("staff/packs/<id:pk>/", views.staff_pack_edit, name="staff-edit"),
    path("staff/packs/<id:pk>/publish/", views.staff_pack_publish, name="staff-publish"),
    path(
        "staff/packs/<id:pk>/exports/<id:export_pk>/rebuild/", views.staff_export_rebuild, name="staff-export-rebuild"
    ),
]
