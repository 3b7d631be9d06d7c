"""The official Python SDK (PyPI `livepeer==0.3.0`) reading the demo's assets through taskgate:
`Livepeer(api_key=..., server_url=...)`, `client.asset.get(asset_id=...)`. Run by tests/sdk/run.mjs
with TASKGATE_URL (taskgate's public base) and ASSET_IDS (JSON); prints one JSON report of what
the SDK returned or raised, which run.mjs checks.

The SDK validates every 200 with its pydantic models and raises on a 304 or a non-JSON 200
(LIVEPEER-ASSETS §6.2): each successful read is a body it accepts.
"""

import json
import os
import time

from livepeer import Livepeer
from livepeer.models import errors

BASE = os.environ["TASKGATE_URL"]
IDS = json.loads(os.environ["ASSET_IDS"])
# A placeholder key: taskgate injects the real one upstream.
client = Livepeer(api_key="placeholder", server_url=BASE)
under_api = Livepeer(api_key="placeholder", server_url=BASE + "/api/")


def value(enum_or_none):
    return getattr(enum_or_none, "value", enum_or_none)


def read(sdk, asset_id):
    """One read, reduced to what run.mjs checks."""
    try:
        res = sdk.asset.get(asset_id=asset_id)
    except errors.SDKError as e:
        return {"ok": False, "status": e.status_code, "thrown": f"SDKError: {e.message}"}
    except Exception as e:  # a validation error, a JSON error: the SDK refused the answer
        return {"ok": False, "status": None, "thrown": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    a = res.asset
    status = a.status if a else None
    policy = a.playback_policy if a else None
    return {
        "ok": res.http_meta.response.status_code == 200 and a is not None,
        "status": res.http_meta.response.status_code,
        "contentType": res.http_meta.response.headers.get("content-type"),
        "id": a.id if a else None,
        "phase": value(status.phase) if status else None,
        "progress": status.progress if status else None,
        "errorMessage": status.error_message if status else None,
        "playbackUrl": a.playback_url if a else None,
        "downloadUrl": a.download_url if a else None,
        "sourceUrl": getattr(a.source, "url", None) if a else None,
        "webhookContext": getattr(policy, "webhook_context", None),
    }


report = {"sdk": "py", "start": [read(client, IDS["failed"]), read(client, IDS["encrypted"])], "polls": []}
deadline = time.monotonic() + 45
while True:
    r = read(client, IDS["upload"])
    report["polls"].append(r)
    if r.get("phase") == "ready" or not r["ok"] or time.monotonic() > deadline:
        break
    time.sleep(0.4)
# Once cached: the same answer, never a 304 (the SDK sends no If-None-Match).
report["polls"] += [read(client, IDS["upload"]) for _ in range(3)]
report["underApi"] = read(under_api, IDS["upload"])
report["failed"] = read(client, IDS["failed"])
report["encrypted"] = read(client, IDS["encrypted"])
report["deleted"] = read(client, IDS["deleted"])
report["unknown"] = read(client, IDS["unknown"])
print(json.dumps(report))
