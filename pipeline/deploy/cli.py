"""``speechpipe deploy status|switch|promote|rollback|revert|weight|pause|resume|feedback``: the admin
API of a running server (``/admin/deploy``) from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

DEFAULT_ADMIN_URL = "http://127.0.0.1:8765"
#: feedback rows asked for at a time by ``speechpipe deploy feedback``.
FEEDBACK_PAGE = 1000


def register(sub: Any) -> None:
    """Add ``deploy`` and its actions to the CLI's subparsers."""
    d = sub.add_parser(
        "deploy",
        help="show or change a running server's deployment (admin API)",
        description="Talk to a server's /admin/deploy: the deploy state, or one action on it. Every change is "
        "recorded with its time and reason in the server's deploy history.",
    )
    d.add_argument("--url", default=DEFAULT_ADMIN_URL, help=f"server (default: {DEFAULT_ADMIN_URL})")
    d.add_argument("--admin-token", help="admin token (default: $SPEECHPIPE_ADMIN_TOKEN)")
    d.add_argument("--reason", help="why, recorded in the deploy history")
    # --reason after the action too (``deploy rollback --reason "..."``)
    reason = argparse.ArgumentParser(add_help=False)
    reason.add_argument("--reason", default=argparse.SUPPRESS, help="why, recorded in the deploy history")
    actions = d.add_subparsers(dest="deploy_action", required=True, metavar="ACTION")
    actions.add_parser("status", help="print the deploy state (JSON)")
    sw = actions.add_parser("switch", help="blue/green: send new streams to VARIANT", parents=[reason])
    sw.add_argument("variant")
    actions.add_parser("promote", help="make the candidate the primary, at 100 %%", parents=[reason])
    actions.add_parser(
        "rollback", help="canary back to 0 %%; blue/green back to the previous variant", parents=[reason]
    )
    actions.add_parser(
        "revert",
        help="after a canary's or shadow's promotion: back to the previous primary (deploy.primary)",
        parents=[reason],
    )
    w = actions.add_parser("weight", help="canary: route this share of new streams to VARIANT", parents=[reason])
    w.add_argument("variant")
    w.add_argument("weight", type=float, help="0 to 1")
    actions.add_parser("pause", help="stop the canary's automatic steps", parents=[reason])
    actions.add_parser("resume", help="let the canary step again", parents=[reason])
    fb = actions.add_parser("feedback", help="print the feedback the server kept (JSON lines, oldest first)")
    fb.add_argument("--after", type=int, default=0, help="only feedback after this seq (default: all)")
    fb.add_argument("--session", help="only this session's")
    d.set_defaults(func=cmd_deploy)


def action_of(args: argparse.Namespace) -> dict | None:
    """The admin API's action for the parsed arguments (None: status)."""
    match args.deploy_action:
        case "status" | "feedback":
            return None
        case "switch":
            return {"action": "switch", "active": args.variant}
        case "weight":
            return {"action": "set_weight", "variant": args.variant, "weight": args.weight}
        case other:
            return {"action": other}


def cmd_deploy(args: argparse.Namespace) -> int:
    from speechpipe.pipeline.server.speech_server import admin_token_from_env  # the server's modules only when used

    token = admin_token_from_env(args.admin_token)
    if args.deploy_action == "feedback":
        return _print_feedback(args, token)
    action = action_of(args)
    if action is not None and args.reason:
        action["reason"] = args.reason
    doc = _call(args.url, "/admin/deploy", token, action)
    if doc is None:
        return 1
    print(json.dumps(doc, indent=2))
    return 0


def _print_feedback(args: argparse.Namespace, token: str | None) -> int:
    """Every kept feedback after ``--after``, a page of :data:`FEEDBACK_PAGE` at a time."""
    import urllib.parse

    after = args.after
    while True:
        query = {"after": after, "limit": FEEDBACK_PAGE, **({"session": args.session} if args.session else {})}
        doc = _call(args.url, "/admin/deploy/feedback?" + urllib.parse.urlencode(query), token, None)
        if doc is None:
            return 1
        for row in doc["feedback"]:
            print(json.dumps(row))
        if len(doc["feedback"]) < FEEDBACK_PAGE:
            break
        after = doc["feedback"][-1]["seq"]
    if doc.get("unsaved"):
        print(f"speechpipe deploy: {doc['unsaved']} more accepted, not yet written to the state", file=sys.stderr)
    return 0


def _call(url: str, path: str, token: str | None, action: dict | None) -> dict | None:
    """GET ``path`` (or POST ``action``) on the admin API; None after printing why it failed."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=None if action is None else json.dumps(action).encode(),
        method="GET" if action is None else "POST",
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip()
        print(f"speechpipe deploy: {exc.code} {detail}", file=sys.stderr)
    except urllib.error.URLError as exc:
        print(f"speechpipe deploy: cannot reach {url}: {exc.reason}", file=sys.stderr)
    return None
