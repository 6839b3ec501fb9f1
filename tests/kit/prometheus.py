"""A fake Prometheus for tests: its HTTP query API (`GET /api/v1/query`) over series a test
sets, answering the small part of PromQL the portal asks (instant vector selectors with
label matchers, `max_over_time(...[range])`, `count(...)`, joined by `or`) in Prometheus's
answer format. Anything else is refused as Prometheus refuses a query it cannot parse (400,
`bad_data`), so a query the portal changes is seen here first.

    with FakePrometheus() as prom:
        prom.series = [({"__name__": "DCGM_FI_DEV_GPU_UTIL", "namespace": "ns", "gpu": "0"}, 80)]
        ... cluster.prometheus_url = prom.url
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .jsonhttp import serve_json

_SELECTOR = re.compile(r'^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(\{(?P<labels>[^}]*)\})?$')
_MATCHER = re.compile(r'^\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)="(?P<value>[^"]*)"\s*$')
_OVER_TIME = re.compile(r'^max_over_time\((?P<selector>.+)\[\d+[smh]\]\)$')
_COUNT = re.compile(r'^count\((?P<selector>.+)\)$')

Series = tuple[dict[str, str], float]


class BadQuery(ValueError):
    pass


class FakePrometheus:
    def __init__(self) -> None:
        self.series: list[Series] = []  # what the exporters report now (labels, value)
        self.queries: list[str] = []
        self._server, self.url = serve_json(self._answer)

    def _answer(self, path: str) -> tuple[int, Any]:
        url = urlsplit(path)
        if url.path != "/api/v1/query":
            return 404, {"status": "error", "error": "not found"}
        query = (parse_qs(url.query).get("query") or [""])[0]
        self.queries.append(query)
        try:
            return 200, {"status": "success", "data": {"resultType": "vector",
                                                       "result": self.evaluate(query)}}
        except BadQuery as exc:
            return 400, {"status": "error", "errorType": "bad_data", "error": str(exc)}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakePrometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _select(self, selector: str) -> list[Series]:
        found = _SELECTOR.match(selector.strip())
        if not found:
            raise BadQuery(f"parse error: unexpected {selector!r}")
        wanted = {"__name__": found["name"]}
        for part in filter(str.strip, (found["labels"] or "").split(",")):
            matcher = _MATCHER.match(part)
            if not matcher:
                raise BadQuery(f"parse error: unexpected label matcher {part!r}")
            wanted[matcher["label"]] = matcher["value"]
        return [(labels, value) for labels, value in self.series
                if all(labels.get(k) == v for k, v in wanted.items())]

    def evaluate(self, query: str) -> list[dict]:
        """The answer's `result`: one item per series (their labels, less the name)."""
        now = time.time()
        result: list[dict] = []
        for part in query.split(" or "):
            part = part.strip()
            if over := _OVER_TIME.match(part):
                found = [({k: v for k, v in labels.items() if k != "__name__"}, value)
                         for labels, value in self._select(over["selector"])]
            elif counted := _COUNT.match(part):
                matched = self._select(counted["selector"])
                found = [({}, float(len(matched)))] if matched else []
            else:
                raise BadQuery(f"parse error: unexpected {part!r}")
            # `or`: the right side adds only series whose labels the left does not have.
            seen = [item["metric"] for item in result]
            result += [{"metric": labels, "value": [now, str(value)]}
                       for labels, value in found if labels not in seen]
        return result
