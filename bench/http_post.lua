-- wrk script: POST a 128-byte JSON body to /v1/publish/bench.http
wrk.method = "POST"
wrk.path = "/v1/publish/bench.http"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"order_id":12345,"amount":150,"currency":"EUR","pad":"' .. string.rep("x", 60) .. '"}'
