from django.urls import path

from . import views

app_name = "access"
urlpatterns = [
    path("", views.access_panel, name="panel"),
    path("instances/<int:pk>/kubeconfig/", views.kubeconfig_download, name="kubeconfig"),
    path("instances/<int:pk>/shell/", views.shell_page, name="shell"),
    path("instances/<int:pk>/tokens/revoke/", views.tokens_revoke_all, name="revoke_all"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="revoke"),
]
