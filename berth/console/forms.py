"""Reading a console form: url-encoded fields as strings, bounded in number and size."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request

from berth.errors import InvalidInput

MAX_FIELDS = 16


async def read_form(request: Request) -> dict[str, str]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise InvalidInput("send the console's forms from the console (url-encoded)")
    form = await request.form(max_files=0, max_fields=MAX_FIELDS)
    return {k: v for k, v in form.items() if not isinstance(v, UploadFile)}
