"""Deploy checks (`manage.py check --deploy`) for what Django's own do not know about."""

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def issuer_is_https(app_configs, **kwargs) -> list[Error]:
    # Over plain HTTP anyone on the path can answer for the IdP: discovery, keys and tokens.
    if settings.OIDC_ISSUER_URL.startswith("http://"):
        return [Error("OIDC_ISSUER_URL must be https:// in production "
                      f"(it is {settings.OIDC_ISSUER_URL}).", id="portal.E001")]
    return []
