"""The OpenID Connect provider's URLs (allauth includes `<package>.urls`), served by the
portal's verifying views in portal.sso instead of allauth's."""
