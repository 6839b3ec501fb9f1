from django import template

from clusters.models import Cluster

register = template.Library()


@register.simple_tag
def orphan_alarms() -> list[Cluster]:
    """Clusters whose reconcile pass held back (too many unknown instances at once), for the
    admin's banner."""
    return list(Cluster.objects.exclude(orphans_held=""))
