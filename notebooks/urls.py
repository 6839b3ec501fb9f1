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
    path("<int:pk>/stop/", views.notebook_stop, name="stop"),
    path("<int:pk>/start/", views.notebook_start, name="start"),
    path("<int:pk>/open/", views.notebook_open, name="open"),
]

# Mounted at /services/ under their own namespace (gpupaas/urls.py).
service_urlpatterns = [
    path("", views.service_list, name="list"),
    path("new/", views.service_new, name="new"),
    path("<int:pk>/", views.service_detail, name="detail"),
    path("<int:pk>/status/", views.service_status, name="status"),
    path("<int:pk>/delete/", views.service_delete, name="delete"),
    path("<int:pk>/retry/", views.service_retry, name="retry"),
    path("<int:pk>/stop/", views.service_stop, name="stop"),
    path("<int:pk>/start/", views.service_start, name="start"),
    path("<int:pk>/open/", views.service_open, name="open"),
    path("<int:pk>/keys/", views.service_key_new, name="key-new"),
    path("<int:pk>/keys/<int:key_id>/revoke/", views.service_key_revoke, name="key-revoke"),
]
