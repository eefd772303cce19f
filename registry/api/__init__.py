"""The registry's REST edge (aiohttp): seed 002's paths at the root of the listen address, /openapi.json, and
nothing else. Handlers only translate between HTTP and the service layer (registry/service)."""
