"""Watches: the events a ``?watch=true`` answers, from the store's event log."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Generator, Mapping

from .errors import Obj, bad_request, cause, invalid
from .store import ResourceInfo, Store, field_match, flag, label_match


def watch(store: Store, info: ResourceInfo, namespace: str | None, name: str | None,
          query: Mapping[str, str], deadline: float) -> Generator[Obj, None, None]:
    """Watch events; initial ADDED events unless resuming, and the initial-events-end
    BOOKMARK that WatchList clients (kubectl >= 1.35 informers) wait for."""
    rv = query.get("resourceVersion") or ""
    send_initial = flag(query, "sendInitialEvents")
    if send_initial and query.get("resourceVersionMatch") != "NotOlderThan":
        raise invalid("ListOptions.meta.k8s.io", "", [cause(
            "resourceVersionMatch",
            "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")])
    if send_initial and not flag(query, "allowWatchBookmarks"):
        raise invalid("ListOptions.meta.k8s.io", "", [cause(
            "allowWatchBookmarks",
            "Forbidden: allowWatchBookmarks must be set to true when sendInitialEvents is true")])
    labels, fields = query.get("labelSelector"), query.get("fieldSelector")

    def matches(obj: Obj) -> bool:
        meta = obj["metadata"]
        return ((namespace is None or meta.get("namespace") == namespace)
                and (name is None or meta.get("name") == name)
                and label_match(labels, meta.get("labels")) and field_match(fields, obj))

    with store.lock:
        if send_initial or rv in ("", "0"):
            items = [o for o in store.items(info, namespace) if matches(o)]
            position, start_rv = len(store.events), store.rv
        else:
            try:
                since = int(rv)
            except ValueError as exc:
                raise bad_request(f"invalid resourceVersion {rv!r}") from exc
            items, start_rv = [], since
            position = bisect.bisect_right([e.rv for e in store.events], since)
    return _stream(store, info, items, position, start_rv, send_initial, matches, deadline)


def _stream(store: Store, info: ResourceInfo, items: list[Obj], position: int, start_rv: int,
            send_initial: bool, matches: Callable[[Obj], bool], deadline: float
            ) -> Generator[Obj, None, None]:
    for obj in items:
        yield {"type": "ADDED", "object": obj}
    if send_initial:
        yield {"type": "BOOKMARK", "object": {
            "kind": info.kind, "apiVersion": info.api_version,
            "metadata": {"resourceVersion": str(start_rv),
                         "annotations": {"k8s.io/initial-events-end": "true"}}}}
    while True:
        with store.lock:
            while position >= len(store.events) and not store.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                store.changed.wait(min(remaining, 0.5))
            batch, position = store.events[position:], len(store.events)
            closed = store.closed
        for event in batch:
            if (event.group, event.plural) != (info.group, info.plural):
                continue
            event_type = event.type
            now_matches = matches(event.obj)
            if event_type == "MODIFIED" and event.old is not None:
                was_matching = matches(event.old)
                if not now_matches and not was_matching:
                    continue
                if not was_matching:
                    event_type = "ADDED"
                elif not now_matches:
                    event_type = "DELETED"
            elif not now_matches:
                continue
            yield {"type": event_type, "object": store.view(info, event.obj)}
        if closed or time.monotonic() >= deadline:
            return
