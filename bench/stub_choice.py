"""Which protobuf stubs decode a CheckRequest fastest: xds-protos (upb) vs envoy-data-plane (betterproto).

Run: python bench/stub_choice.py  (envoy-data-plane is not a project dependency: install it in a
scratch venv beside xds-protos to compare). One 5-header request with a 324-byte body.
"""
import time

from envoy.service.auth.v3 import external_auth_pb2 as x

req = x.CheckRequest()
h = req.attributes.request.http
h.method="POST"; h.path="/v1/chat/completions"; h.id="abc-123"
for k,v in {"authorization":"Bearer "+"e"*414,"content-type":"application/json",":authority":"gw","user-agent":"OpenAI/Python","x-request-id":"abc-123"}.items(): h.headers[k]=v
h.raw_body=b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"'+b"x"*250+b'"}],"max_tokens":64}'
data = req.SerializeToString()
N=20000
t=time.perf_counter()
for _ in range(N): r=x.CheckRequest.FromString(data); _=r.attributes.request.http.headers["authorization"]
print("xds-protos upb parse: %.2f us" % ((time.perf_counter()-t)/N*1e6))
try:
    from envoy_data_plane.envoy.service.auth.v3 import CheckRequest as BPCheck
    t=time.perf_counter()
    for _ in range(N//10): r=BPCheck().parse(data); _=r.attributes.request.http.headers["authorization"]
    print("envoy-data-plane (betterproto) parse: %.2f us" % ((time.perf_counter()-t)/(N//10)*1e6))
except Exception as e:
    print("edp failed", repr(e))
