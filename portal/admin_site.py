"""The admin's home grouped by what administrators do, not by the Python app that holds each
model; what they never touch (allauth's stored provider tokens, which the portal does not
keep) is not shown."""

from typing import Any

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest

# (section, [(app label, model name)...]) in the order administrators work through them.
SECTIONS: list[tuple[str, list[tuple[str, str]]]] = [
    ("Catalogue", [("instances", "ComputeProfile"), ("notebooks", "NotebookProfile"),
                   ("notebooks", "ServiceProfile")]),
    ("Workspaces and quotas", [("workspaces", "Workspace"), ("auth", "Group"),
                               ("auth", "User"), ("workspaces", "GuestAccount")]),
    ("What runs", [("instances", "Instance"), ("notebooks", "Notebook"),
                   ("notebooks", "Service"), ("instances", "QuarantinedInstance")]),
    ("Clusters", [("clusters", "Cluster"), ("clusters", "GpuAllocation")]),
    ("Usage", [("workspaces", "UsageRecord"), ("workspaces", "GpuPrice")]),
    ("Access and audit", [("workspaces", "AuditEvent"), ("api", "ApiToken"),
                          ("access", "AccessToken"), ("access", "ProxyRequest")]),
    ("Sign-in", [("socialaccount", "SocialApp"), ("socialaccount", "SocialAccount"),
                 ("account", "EmailAddress"), ("mfa", "Authenticator")]),
]
HIDDEN = {("socialaccount", "SocialToken")}  # SOCIALACCOUNT_STORE_TOKENS is off


class PortalAdminSite(admin.AdminSite):
    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[Any]:
        apps = super().get_app_list(request, app_label)
        if app_label is not None:  # an app's own page lists its models as Django does
            return apps
        models = {(app["app_label"], m["object_name"]): (app, m)
                  for app in apps for m in app["models"]}
        grouped, placed = [], set(HIDDEN)
        for section, members in SECTIONS:
            found = [models[key] for key in members if key in models]
            placed.update(members)
            if found:
                grouped.append({**found[0][0], "name": section,
                                "models": [m for _, m in found]})
        rest = [m for key, (_, m) in models.items() if key not in placed]
        if rest:  # a model added later shows until it is given a section
            grouped.append({**apps[0], "name": "Other", "models": rest})
        return grouped


class PortalAdminConfig(AdminConfig):
    """django.contrib.admin with the portal's site (in INSTALLED_APPS in its place)."""

    default_site = "portal.admin_site.PortalAdminSite"
