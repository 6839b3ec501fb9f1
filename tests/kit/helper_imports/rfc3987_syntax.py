"""Left out of the Python processes the tests start (Celery workers, `runportal`, `manage.py`,
gunicorn): tests/conftest.py puts this folder first on their PYTHONPATH.

In the test environment `kubernetes_validate` (the emulator's schema checks) is installed, and
the kubernetes client imports it when present; it imports jsonschema, which imports
rfc3987_syntax when that is installed (JupyterLab's jupyter_events asks for it), only to
check "iri" formats, and that module builds a parser for the whole RFC 3987 grammar at
import: about 4 s of CPU for every process the suite starts. Production installs no
kubernetes_validate, so its processes import none of this; nothing in these processes checks
an IRI. The test process itself imports the real module.
"""

raise ImportError("rfc3987_syntax is left out of the tests' helper processes")
