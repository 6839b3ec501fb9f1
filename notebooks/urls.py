from django.urls import path

from . import views

app_name = "notebooks"
urlpatterns = [
    path("", views.notebook_list, name="list"),
    path("new/", views.notebook_new, name="new"),
    path("<int:pk>/", views.notebook_detail, name="detail"),
    path("<int:pk>/status/", views.notebook_status, name="status"),
    path("<int:pk>/delete/", views.notebook_delete, name="delete"),
    path("<int:pk>/retry/", views.notebook_retry, name="retry"),
]
