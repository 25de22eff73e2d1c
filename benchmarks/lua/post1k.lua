-- echo test: POST a 1 KiB body (wrk adds Content-Length from wrk.body).
wrk.method = "POST"
wrk.body = string.rep("a", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
