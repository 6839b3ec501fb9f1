from django.urls import path

from . import views

app_name = "instances"
urlpatterns = [
    path("", views.instance_list, name="list"),
    path("new/", views.instance_new, name="new"),
    path("<int:pk>/", views.instance_detail, name="detail"),
    path("<int:pk>/status/", views.instance_status, name="status"),
    path("<int:pk>/delete/", views.instance_delete, name="delete"),
    path("<int:pk>/collaborators/", views.collaborators, name="collaborators"),
    path("<int:pk>/collaborators/<int:collaborator_pk>/resend/", views.collaborator_resend,
         name="collaborator_resend"),
    path("<int:pk>/collaborators/<int:collaborator_pk>/revoke/", views.collaborator_revoke,
         name="collaborator_revoke"),
    path("<int:pk>/collaborators/<int:collaborator_pk>/remove/", views.collaborator_remove,
         name="collaborator_remove"),
    path("<int:pk>/retry/", views.instance_retry, name="retry"),
    path("<int:pk>/stop/", views.instance_stop, name="stop"),
    path("<int:pk>/start/", views.instance_start, name="start"),
    path("<int:pk>/keep-running/", views.instance_keep_running, name="keep_running"),
]
