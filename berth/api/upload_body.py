"""Receiving an upload's multipart body into a private directory, removed afterwards.

Routes that take files (a model upload, a validation) stream them with `berth.api.multipart`,
bounded by BERTH_MAX_UPLOAD_BYTES and BERTH_UPLOAD_TIMEOUT_SECONDS instead of the small limits
of prediction bodies; `RequestBodyMiddleware` leaves their bodies to them (`streamed`).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request

from berth.api import multipart
from berth.config import Settings


@asynccontextmanager
async def private_upload(
    request: Request,
    settings: Settings,
    files: Collection[str],
    fields: Collection[str],
    prefix: str = "berth-upload-",
) -> AsyncIterator[multipart.Received]:
    """The parts received: `files` written under a fresh private directory (gone on exit),
    `fields` kept. A ClientDisconnect passes through: the route answers no one."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise HTTPException(
            415, "send the upload without Content-Encoding (archives are compressed already)"
        )
    private = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        try:
            async with asyncio.timeout(settings.upload_timeout_seconds):
                received = await multipart.receive(
                    request, private, files, fields, settings.max_upload_bytes
                )
        except TimeoutError:
            raise HTTPException(
                408,
                f"the upload did not arrive within {settings.upload_timeout_seconds:g} s; send "
                "it faster (or raise BERTH_UPLOAD_TIMEOUT_SECONDS)",
                headers={"Connection": "close"},
            ) from None
        yield received
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, private)
