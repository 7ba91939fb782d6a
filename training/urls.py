from django.urls import path

from training import views

app_name = "training"
urlpatterns = [
    path("training/runs/", views.run_list, name="list"),
    path("training/runs/new/", views.launch, name="launch"),
    path("training/runs/new/memory/", views.memory_estimate, name="memory"),
    path("training/runs/<id:pk>/", views.run_detail, name="detail"),
    path("training/runs/<id:pk>/status/", views.run_status, name="status"),
    path("training/runs/<id:pk>/cancel/", views.cancel, name="cancel"),
    path("training/runs/<id:pk>/files/<str:kind>/", views.run_file, name="file"),
    path("training/runs/<id:pk>/files/<str:kind>/<int:index>/", views.run_file, name="sample"),
]
