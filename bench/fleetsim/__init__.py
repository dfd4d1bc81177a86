"""The fleet simulator behind `python -m bench.fleet` and the `fleet` benchmark (bench/fleet.py).

http.py       a minimal HTTP/1.1 client: raw sockets for a request on a new connection, keep-alive
poller.py     keep-alive polling in protocol callbacks (the poll and overload steps)
timers.py     many timers on one loop timer; its lateness is the simulator's own lag
agent.py      simulated agents: the real agent's schedules, enrollment, 401 and Retry-After handling
scenarios.py  what one simulator process runs (a ramp of the fleet, or a loop of one request kind)
driver.py     simulator processes, their results merged
server.py     the real server process, its database (seeded hosts), CPU of server/database/simulator
stats.py      outcomes and latencies (fixed log buckets) per request kind
"""
