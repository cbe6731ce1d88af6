"""Posted forms, read the way the legacy Flask services read them: ``application/x-www-form-
urlencoded`` or ``multipart/form-data`` text fields, the first value of a repeated field, and any
other body (JSON, none) as an empty form. Starlette parses them (python-multipart); the size caps
keep a hostile body from being read whole."""

from starlette.exceptions import HTTPException
from starlette.requests import Request

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_FORM_BYTES = 4 * 1024 * 1024
MAX_FIELDS = 200
MAX_FILES = 5


class FormTooLarge(ValueError):
    """The form is over ``MAX_FORM_BYTES`` (answer 413)."""


class BadForm(ValueError):
    """The body says it is a form but cannot be read as one (answer 400)."""


async def read_form(request: Request, max_bytes: int = MAX_FORM_BYTES) -> dict[str, str]:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in FORM_TYPES:
        return {}
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise FormTooLarge(f"The form is larger than {max_bytes:,} bytes")
    try:
        return await _fields(request, max_bytes)
    except HTTPException as exc:  # Starlette's answer to a malformed multipart body
        raise BadForm(str(exc.detail)) from None


async def _fields(request: Request, max_bytes: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    # A file part is read (into a spooled temporary file) and left out, as Flask left it apart.
    async with request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=max_bytes) as form:
        for name, value in form.multi_items():
            if isinstance(value, str):  # uploaded files are not fields (Flask kept them apart too)
                fields.setdefault(name, value)
    return fields
