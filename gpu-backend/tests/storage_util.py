"""A small create-only object store over real HTTP, for the storage client and grant-path tests."""

import base64
import hashlib

from aiohttp import web


def store_app(objects: dict[str, bytes], gets: list[str] | None = None, gates: dict | None = None) -> web.Application:
    """GET and create-only PUT of /o/{key}, checking x-amz-checksum-sha256 like R2 does. `gets` records the
    keys read, in order; a GET of a key in `gates` (key -> asyncio.Event) answers once its event is set."""
    async def get(request):
        key = request.match_info["key"]
        if gets is not None:
            gets.append(key)
        if gates and key in gates:
            await gates[key].wait()
        data = objects.get(key)
        return web.Response(body=data) if data is not None else web.Response(status=404)

    async def put(request):
        key = request.match_info["key"]
        if request.headers.get("If-None-Match") != "*":
            return web.Response(status=412)
        data = await request.read()
        want = request.headers.get("x-amz-checksum-sha256")
        if want and base64.b64encode(hashlib.sha256(data).digest()).decode() != want:
            return web.Response(status=400)
        if key in objects:
            return web.Response(status=412)
        objects[key] = data
        return web.json_response({"size": len(data)}, status=201)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_get("/o/{key:.+}", get)
    app.router.add_put("/o/{key:.+}", put)
    return app


async def start_store(objects: dict[str, bytes], **kw) -> tuple[web.AppRunner, str]:
    """Serves `objects` on a free local port; (runner to clean up, base URL). `kw`: store_app's."""
    runner = web.AppRunner(store_app(objects, **kw))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


def grant_json(base: str, key: str, mode: str = "read", max_bytes: int | None = None) -> dict:
    """A grant as the edge sends it (src/storage/grants.ts), for an object of this store."""
    return {"key": key, "mode": mode, "method": "GET" if mode == "read" else "PUT", "url": f"{base}/o/{key}",
            "headers": {"if-none-match": "*"} if mode == "create" else {}, "expires": 1,
            **({"maxBytes": max_bytes} if max_bytes is not None else {})}
