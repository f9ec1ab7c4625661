"""Web-server plugins: an activity per application and one per request.

Each integration is a module of its own, imported explicitly, so that
``import activity`` never imports a web framework:

* :mod:`activity.integrations.asgi`: any ASGI server and application, no framework
  needed (the middleware, the request's intrinsics, background work, problem
  details and the statistics endpoint);
* :mod:`activity.integrations.starlette`: Starlette (``pip install 'activity[starlette]'``);
* :mod:`activity.integrations.fastapi`: FastAPI dependencies (``pip install 'activity[fastapi]'``);
* :mod:`activity.integrations.litestar`: a Litestar plugin (``pip install 'activity[litestar]'``);
* :mod:`activity.integrations.aiohttp`: aiohttp, in the style of ``aiojobs.aiohttp``
  (``pip install 'activity[aiohttp]'``).
"""

__all__: list[str] = []
