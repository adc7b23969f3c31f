"""HTTP load benchmark of the service (`python -m benchmarks.serve_load`; see __main__.py).

__main__.py   command line; alternates the servers over rounds
replay.lua    the wrk script: replays the requests, counts the window, prints JSON
scenarios.py  what is sent: one entry per scenario (add new ones there)
payloads.py   request bodies (multipart PNGs, JSON) and the digits in them
servers.py    start a server on a free loopback port, wait for /readyz, stop it
              (standard library only: the tests use it too)
wrk.py        drive a server with wrk (replay.lua): replies and server CPU over a window
procfs.py     CPU seconds and RSS of a server's process tree, from /proc
soak.py       the mixed soak: Python clients that count every reply
report.py     Markdown tables
"""
