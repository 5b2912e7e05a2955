"""The schema of a ``POST /v1/classify`` body, declared once with pydantic: it checks each
request (``refusal``) and is the request body of the OpenAPI document (``body_model``).
A row's fields are its task's (``Task.fields``). A module of its own, imported only where
used, as pydantic comes with the serve extra (FastAPI)."""

from __future__ import annotations

import functools
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic_core import PydanticCustomError

from ..data.tasks import get_task, json_kind

KINDS = ("texts", "rows")
# pydantic's type errors -> what was expected
_EXPECTED = {"string_type": "a string", "dict_type": "an object", "model_type": "an object", "list_type": "an array"}


def _nonblank(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError("blank", "empty (only whitespace)")
    return text


Text = Annotated[str, AfterValidator(_nonblank)]


@functools.cache
def row_model(task: str | None):
    """A row of ``task``'s raw fields (other keys, e.g. a label, may come along). None, an
    HF directory's rows: any object, as its template names its own fields (and a missing
    one when it renders)."""
    return dict[str, Any] if task is None else _fields_model(f"{task.capitalize()}Row", get_task(task).fields)


def _fields_model(name: str, fields: dict) -> type[BaseModel]:
    return create_model(name, __config__=ConfigDict(extra="allow", strict=True),
                        **{k: (_fields_model(name + k.capitalize(), t) if isinstance(t, dict) else t, ...)
                           for k, t in fields.items()})


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: 3 is not the text "3"

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, body):
        """Both kinds, or neither, is refused before any item is checked; unknown keys are
        named first (by extra="forbid")."""
        if isinstance(body, dict) and body.keys() <= set(KINDS) and len(body) != 1:
            raise PydanticCustomError("one_kind", 'give exactly one of "texts" (formatted inputs) or "rows" '
                                                  "(raw task fields)")
        return body


@functools.cache
def body_model(rows_task: str | None, max_items: int) -> type[BaseModel]:
    """The classify body; ``rows_task`` as for row_model."""
    items = dict(default_factory=list, min_length=1, max_length=max_items)
    return create_model("ClassifyRequest", __base__=_Request, __doc__='exactly one of "texts" or "rows"',
                        texts=(list[Text], Field(description="formatted model inputs", **items)),
                        rows=(list[row_model(rows_task)],
                              Field(description="raw task fields, rendered as training rendered them", **items)))


def rows_task(model) -> str | None:
    """The task whose fields a row must have: a lean model's (its task's Python template
    renders rows); None for an HF directory (its stored template does)."""
    return model.task if model.format == "lean" else None


def refusal(payload, model, max_items: int) -> tuple[int, str] | None:
    """(4xx status, message) of the first problem of a parsed body; None if it is valid."""
    try:
        body_model(rows_task(model), max_items).model_validate(payload)
    except ValidationError as e:
        return _message(e, max_items)
    return None


def _message(e: ValidationError, max_items: int) -> tuple[int, str]:
    """pydantic's first error as our 4xx naming the key, item and field (``texts[3]``,
    ``rows[1]: field 'premise'``): 400 for the body's shape and items, 413 for too many
    items, 422 for a row's fields."""
    errors = e.errors(include_url=False)
    unknown = sorted(str(err["loc"][0]) for err in errors if err["type"] == "extra_forbidden")
    if unknown:
        return 400, f"unknown key(s) {', '.join(map(repr, unknown))}: give \"texts\" or \"rows\""
    typ, loc, got = errors[0]["type"], errors[0]["loc"], errors[0]["input"]
    if typ == "one_kind":
        return 400, errors[0]["msg"]
    if not loc:
        return 400, f'the body must be a JSON object {{"texts": [...]}} or {{"rows": [...]}}, got {json_kind(got)}'
    key = loc[0]
    if len(loc) == 1:
        if typ == "too_long":
            return 413, f"{len(got)} {key}; at most {max_items} per request (--max_items)"
        return 400, f'"{key}" is empty' if typ == "too_short" else f'"{key}" must be an array, got {json_kind(got)}'
    what = "an object of task fields" if key == "rows" and len(loc) == 2 else _EXPECTED.get(typ)
    reason = "missing" if typ == "missing" else f"expected {what}, got {json_kind(got)}" if what else errors[0]["msg"]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[2:]).lstrip(".")
    return 422 if field else 400, f"{key}[{loc[1]}]: " + (f"field '{field}': " if field else "") + reason
