"""Schemathesis hooks (loaded through ``SCHEMATHESIS_HOOKS``): the error contract of docs/design.md as a
check that runs on every response of the fuzzing run."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import schemathesis

CODE = re.compile(r"^[A-Z][A-Z0-9_]*[A-Z0-9]$")
# A session of another user, put among the fuzzed path values by the test's config file.
STRANGER_SESSION = os.environ.get("VITALCAST_FUZZ_STRANGER_SESSION", "")
# Set when the run's token must be refused: the code every /api answer must carry.
REFUSED_WITH = os.environ.get("VITALCAST_FUZZ_REFUSED_WITH", "")


@schemathesis.check
def problem_json_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error is problem+json with a stable code and its own status; Retry-After agrees."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    if content_type != "application/problem+json":
        raise AssertionError(f"{response.status_code} answered as {content_type!r}")
    body = json.loads(response.content)
    code = body.get("code")
    if not isinstance(code, str) or not CODE.match(code):
        raise AssertionError(f"{response.status_code} without a stable code: {code!r}")
    if body.get("status") != response.status_code:
        raise AssertionError(f"body status {body.get('status')!r} != {response.status_code}")
    retry_after = response.headers.get("retry-after")
    if retry_after is not None and retry_after != [str(body.get("retry_after_seconds"))]:
        raise AssertionError(f"Retry-After {retry_after} != {body.get('retry_after_seconds')!r}")
    return True


@schemathesis.check
def strangers_session_is_not_found(ctx: Any, response: Any, case: Any) -> bool | None:
    """Whatever else a request holds, another user's session is never served or changed."""
    path_parameters = case.path_parameters or {}
    if not STRANGER_SESSION or path_parameters.get("session_id") != STRANGER_SESSION:
        return None
    if response.status_code not in (404, 422, 429):
        raise AssertionError(f"another user's session answered {response.status_code}")
    return True


@schemathesis.check
def nosniff_on_every_answer(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every answer, error or not, tells browsers not to sniff its content type."""
    if response.headers.get("x-content-type-options") != ["nosniff"]:
        raise AssertionError("no X-Content-Type-Options: nosniff")
    return True


@schemathesis.check
def refused_before_anything_else(ctx: Any, response: Any, case: Any) -> bool | None:
    """With a token the server must refuse, every /api request is that 401, whatever its body,
    parameters or size: authentication comes before validation and before the body."""
    if not REFUSED_WITH or not case.path.startswith("/api/"):
        return None
    if response.status_code != 401:
        raise AssertionError(f"answered {response.status_code} instead of 401")
    code = json.loads(response.content).get("code")
    if code != REFUSED_WITH:
        raise AssertionError(f"401 with {code!r} instead of {REFUSED_WITH!r}")
    return True
