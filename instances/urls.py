from django.urls import path

from . import views

app_name = "instances"
urlpatterns = [
    path("", views.instance_list, name="list"),
    path("new/", views.instance_new, name="new"),
    path("<int:pk>/", views.instance_detail, name="detail"),
    path("<int:pk>/status/", views.instance_status, name="status"),
    path("<int:pk>/delete/", views.instance_delete, name="delete"),
    path("<int:pk>/retry/", views.instance_retry, name="retry"),
]
