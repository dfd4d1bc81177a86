"""The fleet simulator behind `python -m bench.fleet` and the `fleet` benchmark (bench/fleet.py).

http.py       a minimal HTTP/1.1 client on asyncio protocols (cheap per request)
agent.py      simulated agents: the real agent's schedules, enrollment, 401 and Retry-After handling
scenarios.py  what one simulator process runs (a ramp of the fleet, or a loop of one request kind)
driver.py     simulator processes, their results merged
server.py     the real server process, its database (seeded hosts), CPU of server/database/simulator
stats.py      outcomes and latencies per request kind
"""
