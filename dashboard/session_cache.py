"""The one session-cache helper: a bounded, least-recently-used store in ``st.session_state``.

A case's data never leaves its session: results are kept per session under one ``fl_*`` key (an
``OrderedDict``, oldest first), and the oldest entries go once ``max_entries`` is reached.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Hashable, Iterator

import streamlit as st


class SessionCache:
    """``SessionCache("fl_results", 24)``: ``get`` / ``put`` / ``get_or_compute`` on this session's store."""

    def __init__(self, key: str, max_entries: int):
        self.key = key
        self.max_entries = max_entries

    def store(self) -> "OrderedDict[Hashable, Any]":
        store = st.session_state.get(self.key)
        if not isinstance(store, OrderedDict):
            store = st.session_state[self.key] = OrderedDict(store or {})
        return store

    def get(self, key: Hashable, default: Any = None) -> Any:
        store = self.store()
        if key not in store:
            return default
        store.move_to_end(key)
        return store[key]

    def __contains__(self, key: Hashable) -> bool:
        return key in self.store()

    def put(self, key: Hashable, value: Any) -> Any:
        store = self.store()
        store.pop(key, None)
        store[key] = value
        while len(store) > self.max_entries:
            store.popitem(last=False)
        return value

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any] | None) -> Any:
        """The cached value; computed and kept when missing, unless ``compute`` is None ("not computed yet": None)."""
        store = self.store()
        if key in store:
            store.move_to_end(key)
            return store[key]
        return None if compute is None else self.put(key, compute())

    def items_newest_first(self) -> Iterator[tuple[Hashable, Any]]:
        return reversed(list(self.store().items()))

    def clear(self) -> None:
        self.store().clear()
