"""Where users reach a running notebook: a local one through its origin on the portal
(access.origins), whatever port its server has now; one on Kubernetes at its Ingress host."""

from django import template
from django.urls import reverse

from access import origins
from clusters.models import Cluster
from notebooks.models import Notebook

register = template.Library()


@register.simple_tag(takes_context=True)
def reach(context: template.Context, notebook: Notebook) -> dict[str, str]:
    """{url, open (the Open button's link), with_token (for programs)}."""
    if notebook.instance.cluster.backend != Cluster.Backend.LOCAL:
        return {"url": notebook.url, "open": notebook.open_url,
                "with_token": notebook.open_url}
    url = f"{origins.origin_for(notebook, context['request'])}/lab"
    return {"url": url, "open": reverse("notebooks:open", args=[notebook.pk]),
            "with_token": f"{url}?token={notebook.token}"}
