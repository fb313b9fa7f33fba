"""The request pipeline: what every request passes through before and after its view, and the
shared Redis state behind it. `hooks.init_pipeline(app)` wires it; the modules, bottom up:

- `redis_client`: the shared Redis connection (None without REDIS_URL).
- `client_address`: the caller's address (behind TRUSTED_PROXIES, from X-Forwarded-For).
- `shared_state`: one MGET a request for what every host must agree on, and the mirrors'
  trust (the database is the record; Redis mirrors it).
- `blocked_ips`: blocked addresses and the security events that block one.
- `token_blocklist`: revoked JWTs (the revocation mirror).
- `catalog_cache`: the public catalog's cache and conditional GET.
- `catalog_fast_path`: a guest's current cached catalog page answered before Flask runs (WSGI,
  inside `client_address.TrustedProxies`), its limits and checks in one Redis round trip.
- `rate_limits`: per-route limits read from config, and the limit headers on writes.
- `hash_slots`: the host's bound on password hashes computed at once.
- `hooks`: the before/after-request hooks, in order.
"""
