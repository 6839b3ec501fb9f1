"""Safe Kubernetes names and labels from user-chosen strings.

Names carry the instance's database id, so two instances never collide however similar their
user-facing names are; the readable part is only for people running kubectl.
"""

import hashlib
import re

_NOT_ALLOWED = re.compile(r"[^a-z0-9-]+")
_LABEL_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9._-]+")


def dns_label(text: str, max_length: int = 63) -> str:
    """A DNS-1123 label (lowercase alphanumerics and '-', alphanumeric at both ends)."""
    slug = _NOT_ALLOWED.sub("-", text.lower()).strip("-")
    slug = re.sub(r"-{2,}", "-", slug)[:max_length].strip("-")
    return slug or "x"


def label_value(text: str) -> str:
    """A valid label value (at most 63 characters); long or odd values get a short hash."""
    value = _LABEL_NOT_ALLOWED.sub("_", text).strip("._-")
    if len(value) > 63 or value != text:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        value = f"{value[:54].strip('._-')}-{digest}".strip("._-")
    return value


def instance_object_name(*, key: str, owner: str, name: str) -> str:
    """`<owner>-<name>-<id>`: readable, unique by the id, at most 63 characters."""
    number = key.rsplit("-", 1)[-1]
    room = 63 - len(number) - 1
    readable = dns_label(f"{owner[:20]}-{name}", room)
    return f"{readable}-{number}"
