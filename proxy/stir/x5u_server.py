"""A tiny https file server for x5u certificates (tests and `make run`).

`python -m proxy.stir.x5u_server --dir demo-certs --listen 127.0.0.1:8443` serves the folder's certificate
files (only .pem/.crt/.cer/.der, never keys) with a Cache-Control max-age, over TLS with x5u-server.pem/.key.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
from pathlib import Path

from aiohttp import web

_SERVED = (".pem", ".crt", ".cer", ".der")
REQUESTS = web.AppKey("requests", list[str])  # one entry per request (path), for tests


def make_app(directory: str | Path, max_age: int = 3600) -> web.Application:
    """aiohttp app serving certificate files from `directory`; records each request path in app[REQUESTS]."""
    base = Path(directory).resolve()
    app = web.Application()
    app[REQUESTS] = []

    async def serve(request: web.Request) -> web.Response:
        request.app[REQUESTS].append(request.path)
        name = request.match_info["name"]
        path = (base / name).resolve()
        if path.parent != base or path.suffix.lower() not in _SERVED or not path.is_file():
            raise web.HTTPNotFound()
        ctype = (
            "application/pkix-cert" if path.suffix.lower() in (".der", ".cer") else "application/x-pem-file"
        )
        return web.Response(
            body=path.read_bytes(), content_type=ctype, headers={"Cache-Control": f"max-age={max_age}"}
        )

    app.router.add_get("/{name}", serve)
    return app


def server_ssl_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


async def serve_forever(directory: str, host: str, port: int, cert: str, key: str) -> None:
    runner = web.AppRunner(make_app(directory))
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=server_ssl_context(cert, key))
    await site.start()
    print(f"x5u server: https://{host}:{port}/ serving {directory}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="serve x5u certificates over https")
    parser.add_argument("--dir", default="demo-certs")
    parser.add_argument("--listen", default="127.0.0.1:8443")
    parser.add_argument("--cert", help="server certificate (default DIR/x5u-server.pem)")
    parser.add_argument("--key", help="server key (default DIR/x5u-server.key)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    cert = args.cert or str(Path(args.dir) / "x5u-server.pem")
    key = args.key or str(Path(args.dir) / "x5u-server.key")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args.dir, host or "127.0.0.1", int(port), cert, key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
