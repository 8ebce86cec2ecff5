"""What every staff view of orders shares: read-only rows, and no lookup through a secret.

State is changed only through the actions (which call the services), never by editing fields:
every model here is read-only in its change form. The VM admin password is never displayed, and
never filterable: the changelists accept query-string lookups only on their list_filter and
date_hierarchy fields, never on a secret or a message body (a `?admin_password__regex=^a` lookup
answered "found" / "not found" and so leaked the password a character at a time).
"""

from __future__ import annotations

import copy
from typing import Any

from django.contrib import admin
from django.db.models.constants import LOOKUP_SEP
from django.http import HttpRequest

MASK = "********"


# Never a lookup through these, on any model or relation (a regex lookup is an oracle).
SECRET_FIELDS = frozenset({"admin_password", "admin_password_encrypted", "password", "body"})


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows are created by the shop's workflows; staff look and use actions."""

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        """Only the lookups the list's own filters make (Django allows any local field)."""
        parts = lookup.split(LOOKUP_SEP)
        if SECRET_FIELDS.intersection(parts) or parts[0] not in self._filter_fields(request):
            return False
        return super().lookup_allowed(lookup, value, request)

    def _filter_fields(self, request: HttpRequest | None) -> set[str]:
        fields = {self.date_hierarchy.split(LOOKUP_SEP)[0]} if self.date_hierarchy else set()
        list_filter = self.get_list_filter(request) if request is not None else self.list_filter
        for item in list_filter:
            if isinstance(item, type) and issubclass(item, admin.SimpleListFilter):
                fields.add(getattr(item, "parameter_name", ""))
            elif isinstance(item, (list, tuple)) and isinstance(item[0], str):
                fields.add(item[0].split(LOOKUP_SEP)[0])
            elif isinstance(item, str):
                fields.add(item.split(LOOKUP_SEP)[0])
        return fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def masked_body(body: Any) -> Any:
    """The outbox body with every "password" value replaced, at any depth, for display."""
    if isinstance(body, dict):
        return {
            key: MASK if key == "password" else masked_body(value) for key, value in body.items()
        }
    if isinstance(body, list):
        return [masked_body(item) for item in body]
    return copy.copy(body)
