"""One call of a node's HTTPS API from a lab host, as a program would make it.

``python -m chaos.api_call --ca CA.crt --session FILE METHOD URL [JSON]`` trusts only
the cluster CA, sends the session cookie and CSRF token kept in FILE (written by a
``POST .../api/login`` through this tool), and prints one JSON line
``{"status": <HTTP status>, "body": <the answer's JSON>}``. Exit 0 whatever the status
(the test reads it), 2 when the node cannot be reached or the TLS handshake fails.
"""
from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

COOKIE = "hacluster_session"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chaos.api_call")
    p.add_argument("--ca", required=True)
    p.add_argument("--session", required=True, help="file keeping the cookie and CSRF token")
    p.add_argument("method")
    p.add_argument("url")
    p.add_argument("body", nargs="?")
    args = p.parse_args(argv)
    kept = Path(args.session)
    session = json.loads(kept.read_text()) if kept.exists() else {}
    request = urllib.request.Request(args.url, method=args.method,
                                     data=args.body.encode() if args.body else None)
    request.add_header("Content-Type", "application/json")
    if session.get("cookie"):
        request.add_header("Cookie", f"{COOKIE}={session['cookie']}")
        request.add_header("X-CSRF-Token", session["csrf"])
    context = ssl.create_default_context(cafile=args.ca)
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as r:
            status, headers, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    except OSError as e:
        print(json.dumps({"status": 0, "error": str(e)}))
        return 2
    body = json.loads(raw) if raw else None
    if args.url.endswith("/api/login") and status == 200:
        cookie = next(c.split(";")[0].split("=", 1)[1] for c in headers.get_all("Set-Cookie")
                      if c.startswith(COOKIE + "="))
        kept.write_text(json.dumps({"cookie": cookie, "csrf": body["csrf"]}))
    print(json.dumps({"status": status, "body": body}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
