"""A small service written with Geode's runtime library, for the end-to-end mesh tests.

python mesh_app.py serve PORT          serve /hello and /echo over mTLS with the policy
python mesh_app.py call URL PEER       GET URL as this instance, expecting PEER's SPIFFE id
"""

from __future__ import annotations

import json
import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from geode.runtime import Credentials, mesh_client, peer_identity, serve_asgi


async def hello(request: Request) -> JSONResponse:
    return JSONResponse({"hello": str(peer_identity(request.scope))})


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"echo": (await request.body()).decode()})


def main() -> int:
    credentials = Credentials.from_env()
    if sys.argv[1] == "serve":
        app = Starlette(routes=[Route("/hello", hello), Route("/echo", echo, methods=["POST"])])
        server = serve_asgi(
            app, credentials, host="127.0.0.1", port=int(sys.argv[2]), watch=0.2, log_config=None
        )
        server.run()
        return 0
    url, peer = sys.argv[2], sys.argv[3]
    with mesh_client(credentials, [peer], timeout=10) as client:
        response = client.get(url)
    print(json.dumps({"status": response.status_code, "body": response.json()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
