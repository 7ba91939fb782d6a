from django.urls import path

from marketplace.commerce import views

app_name = "commerce"
urlpatterns = [
    path("buy/<id:version_pk>/", views.checkout, name="checkout"),
    path("orders/<id:pk>/", views.order_detail, name="order"),
    path("orders/<id:pk>/status/", views.order_status, name="order-status"),
    path("stripe/webhook/", views.stripe_webhook, name="stripe-webhook"),
    path("my/licences/", views.dashboard, name="dashboard"),
    path("certificates/<uuid:pk>/", views.certificate, name="certificate"),
    path("my/licences/<uuid:pk>/downloads/", views.downloads, name="downloads"),
    path("downloads/<str:token>/", views.download_file, name="download-file"),
]
