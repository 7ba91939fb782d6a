from django.urls import path

from marketplace.packs import views

app_name = "packs"
urlpatterns = [
    path("packs/", views.pack_list, name="list"),
    path("packs/<slug:slug>/", views.pack_detail, name="detail"),
    path("packs/<slug:slug>/v<int:number>/", views.version_detail, name="version"),
    path("packs/<slug:slug>/v<int:number>/revocations/", views.revocation_list, name="revocations"),
    path("packs/<slug:slug>/v<int:number>/thumbnails/<int:item_pk>/", views.item_thumbnail, name="thumbnail"),
    path("staff/packs/", views.staff_pack_list, name="staff-list"),
    path("staff/packs/new/", views.staff_pack_edit, name="staff-new"),
    path("staff/packs/<int:pk>/", views.staff_pack_edit, name="staff-edit"),
    path("staff/packs/<int:pk>/publish/", views.staff_pack_publish, name="staff-publish"),
    path(
        "staff/packs/<int:pk>/exports/<int:export_pk>/rebuild/", views.staff_export_rebuild, name="staff-export-rebuild"
    ),
]
