from django.urls import path

from marketplace.curation import views

app_name = "curation"
urlpatterns = [
    path("search/", views.search, name="search"),
    path("review/", views.review_queue, name="review"),
    path("flags/<id:pk>/", views.flag_detail, name="flag"),
    path("assets/<id:asset_pk>/", views.analysis_detail, name="analysis"),
]
