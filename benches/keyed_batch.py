# A keyed /v1/batch against a running surge on 127.0.0.1:PORT (tokens admin:ad,
# storefront:sf): time one unkeyed then one keyed batch of N reserve ops.
# Usage: python3 benches/keyed_batch.py PORT N KEY

import http.client, json, sys, time
port, n, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
c.request("PUT", "/v1/skus/KB", json.dumps({"on_hand": 10_000_000}), {"Authorization": "Bearer ad", "Content-Type": "application/json"})
r = c.getresponse(); r.read()
ops = [{"op": "reserve", "lines": [{"sku": "KB", "qty": 1}], "ttl_ms": 600000} for _ in range(n)]
body = json.dumps({"ops": ops})
for label, headers in [("unkeyed", {}), ("keyed", {"Idempotency-Key": key})]:
    h = {"Authorization": "Bearer sf", "Content-Type": "application/json", **headers}
    t = time.perf_counter()
    c.request("POST", "/v1/batch", body, h)
    r = c.getresponse(); data = r.read()
    dt = time.perf_counter() - t
    print(f"{label} n={n}: status {r.status}, {dt*1000:.1f} ms")
