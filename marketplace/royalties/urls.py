from django.urls import path

from marketplace.royalties import views

app_name = "royalties"
urlpatterns = [
    path("my/earnings/", views.earnings, name="earnings"),
    path("my/earnings/statements/<int:year>-<int:month>.csv", views.statement_csv, name="statement"),
    path("my/payouts/", views.payouts, name="payouts"),
    path("my/payouts/connect/", views.connect_start, name="connect"),
    path("my/payouts/connect/return/", views.connect_return, name="connect-return"),
]
