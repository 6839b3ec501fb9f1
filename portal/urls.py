from django.urls import path

from . import views

app_name = "portal"
urlpatterns = [
    path("", views.landing, name="landing"),
    path("ping/", views.ping, name="ping"),
    path("signed-out/", views.signed_out, name="signed_out"),
]
